"""The largest TrainerResult the API allows, for tests of the channels that carry results to the status.

"Largest" by what bounds a result: the approaches' rows are at most five (base zero-shot, base k-shot,
reference zero-shot, reference k-shot, fine-tuned: `evaluation.baselines` with `fewShotExamples` up to 32
and a `referenceModel`), every evaluation field is set with full-precision floats, both fit diagnostics are
reported, and the free texts (message, verdict, fit messages), which the API does not bound, are long:
`TEXT` characters each, with quotes and non-ASCII characters that JSON escaping and UTF-8 make longer.
"""

from __future__ import annotations

from kubetune.api.outcome import FitReport, TrainerResult
from kubetune.api.status import ApproachResult, EvaluationResult, EvaluationSummary, Metrics

#: Characters of each free text: far beyond any message the trainer writes (its longest are about 400).
TEXT = 3000


def long_text(what: str, length: int = TEXT) -> str:
    """`what`, then filler with a quote, a backslash and non-ASCII characters, to `length` characters."""
    filler = ' "quoted" \\ café \u2013 ünïcode 步骤'
    text = what + (filler * (length // len(filler) + 1))
    return text[:length]


def _figures(seed: int) -> dict[str, float | int]:
    return {
        "eval_loss": 1.234567890123 + seed,
        "perplexity": 3.4364412345678 + seed,
        "token_accuracy": 0.123456789012345,
        "exact_match": 0.987654321098765,
        "examples": 100_000 + seed,
        "latency_seconds": 0.0123456789012345,
        "tokens_per_second": 12345.678901234,
        "parameters": 70_000_000_000 + seed,
    }


def largest_evaluation() -> EvaluationSummary:
    rows = [
        ("base zero-shot", "zero-shot", "base"),
        ("base 32-shot", "few-shot", "base"),
        ("reference zero-shot", "zero-shot", "reference"),
        ("reference 32-shot", "few-shot", "reference"),
        ("fine-tuned", "fine-tuned", "fine-tuned"),
    ]
    approaches = [
        ApproachResult(name=name, approach=approach, model=model, **_figures(seed))
        for seed, (name, approach, model) in enumerate(rows)
    ]
    return EvaluationSummary(
        base_model=EvaluationResult(**_figures(10)),
        fine_tuned=EvaluationResult(**_figures(11)),
        approaches=approaches,
        verdict=long_text("fine-tuning paid off: "),
    )


def largest_result() -> TrainerResult:
    """A result as large as the API allows (see the module docstring)."""
    fit = [
        FitReport(
            type="OverfittingSuspected",
            status="True",
            reason="EvalLossRising",
            message=long_text("eval loss rose: "),
            since_step=123_456,
        ),
        FitReport(
            type="UnderfittingSuspected",
            status="True",
            reason="TrainingDiverged",
            message=long_text("train loss diverged: "),
            since_step=654_321,
        ),
    ]
    return TrainerResult(
        outcome="EarlyStopped",
        reason="EarlyStopped",
        message=long_text("stopped early: "),
        retryable=False,
        step=2**31 - 1,
        total_steps=2**31 - 1,
        best_metric=0.123456789012345,
        best_step=2**31 - 2,
        output_path="/mnt/pvc/" + "c" * 253 + "/" + "p" * 1024 + "/output",
        evaluation=largest_evaluation(),
        metrics=Metrics(
            train_loss=1.11111111111,
            eval_loss=2.2222222222,
            best_eval_loss=0.333333333333,
            best_step=2**31 - 2,
            tokens_per_second=99999.9999999,
            learning_rate=0.000123456789,
        ),
        fit=fit,
    )
