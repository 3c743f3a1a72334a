"""The termination message always fits the kubelet's cap, whole when it can, marked when shortened."""

from __future__ import annotations

import pytest

from kubetune.api.outcome import TERMINATION_MESSAGE_LIMIT, TrainerResult
from kubetune.api.status import EvaluationSummary
from kubetune.policies.observed import parse_termination_message
from tests.support.results import largest_evaluation, largest_result, long_text

pytestmark = pytest.mark.timeout(10)

WHERE = "pvc://checkpoints/demo/output/result.json"
SMALL = TrainerResult(outcome="Succeeded", reason="Succeeded", message="trained 40 steps", retryable=False, step=40)


def kept(text: str) -> TrainerResult:
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT, len(text.encode())
    parsed = parse_termination_message(text)
    assert parsed is not None, text[:200]
    return parsed


@pytest.mark.parametrize(
    ("result", "whole", "evaluation_kept", "verdict_kept", "fit_kept", "message_whole"),
    [
        (SMALL, True, False, False, False, True),
        # the approaches' rows go first; base, fine-tuned, verdict and fit are kept when they then fit
        (
            SMALL.model_copy(
                update={
                    "evaluation": largest_evaluation().model_copy(update={"verdict": "paid off"}),
                    "fit": [f.model_copy(update={"message": long_text("fit", 700)}) for f in largest_result().fit],
                }
            ),
            False,
            True,
            True,
            True,
            True,
        ),
        # a long verdict: the rows and fit go; the verdict is kept alone if it fits
        (
            SMALL.model_copy(update={"evaluation": EvaluationSummary(verdict=long_text("v", 2500))}),
            True,
            True,
            True,
            True,
            True,
        ),
        (largest_result(), False, False, False, False, False),
        # a message alone longer than the cap is cut
        (SMALL.model_copy(update={"message": long_text("m", 10_000)}), False, False, False, False, False),
    ],
    ids=["small", "rows-dropped", "long-verdict-fits", "largest", "huge-message"],
)
def test_the_termination_message_fits_and_says_when_it_is_not_whole(
    result: TrainerResult, whole: bool, evaluation_kept: bool, verdict_kept: bool, fit_kept: bool, message_whole: bool
) -> None:
    parsed = kept(result.termination_message(WHERE))
    assert (parsed == result) is whole
    assert (parsed.result_file is None) is whole
    if not whole:
        assert parsed.result_file == WHERE
    assert (parsed.evaluation is not None and parsed.evaluation.base_model is not None) is (
        evaluation_kept and result.evaluation is not None and result.evaluation.base_model is not None
    )
    assert (parsed.evaluation is not None and parsed.evaluation.verdict is not None) is verdict_kept
    assert (parsed.fit == result.fit and bool(result.fit)) is (fit_kept and bool(result.fit))
    assert (parsed.message == result.message) is message_whole
    assert (parsed.outcome, parsed.reason, parsed.step) == (result.outcome, result.reason, result.step)


def test_a_shortened_largest_result_keeps_the_key_figures() -> None:
    result = largest_result()
    parsed = kept(result.termination_message(WHERE))
    assert parsed.metrics == result.metrics and parsed.best_step == result.best_step
    assert parsed.output_path == result.output_path and parsed.message.startswith("stopped early: ")


def test_absurd_paths_still_fit() -> None:
    result = SMALL.model_copy(update={"output_path": "/" + "x" * 9000, "message": long_text("m", 5000)})
    parsed = kept(result.termination_message("/" + "y" * 9000))
    assert parsed.result_file is not None and parsed.output_path is None
