"""Fit diagnostics as a table: loss curves in, warning signs out."""

from __future__ import annotations

import pytest

from kubetune.api.status import ConditionType, Reason
from kubetune.policies.fit import Evaluation, diverged, overfitting, underfitting


def curve(*points: tuple[float, float | None]) -> list[Evaluation]:
    return [Evaluation(step=10 * (i + 1), eval_loss=e, train_loss=t) for i, (e, t) in enumerate(points)]


HEALTHY = curve((2.0, 2.2), (1.6, 1.7), (1.3, 1.4), (1.2, 1.2), (1.15, 1.1))
OVERFIT = curve((2.0, 2.2), (1.5, 1.6), (1.6, 1.2), (1.7, 0.9), (1.9, 0.5))
NOISY = curve((2.0, 2.2), (1.5, 1.6), (1.6, 1.2), (1.55, 0.9), (1.7, 0.5))
BOTH_RISE = curve((2.0, 2.2), (1.5, 1.6), (1.6, 1.7), (1.7, 1.8), (1.9, 1.9))
FLAT = curve((2.0, 2.1), (1.98, 2.05), (1.97, 2.0), (1.97, 2.0))


@pytest.mark.parametrize(
    ("history", "rising", "since"),
    [
        (HEALTHY, 3, None),
        (OVERFIT, 3, 20),
        (OVERFIT, 4, None),  # only three rises so far
        (OVERFIT, 2, 30),
        (NOISY, 3, None),  # a dip in between: not a run of rises
        (BOTH_RISE, 3, None),  # train loss rising too: divergence, not over-fitting
        (OVERFIT[:2], 3, None),  # too few evaluations
        (curve((1.0, None), (1.1, None), (1.2, None), (1.3, None)), 3, None),  # no train loss logged
    ],
)
def test_overfitting(history: list[Evaluation], rising: int, since: int | None) -> None:
    signal = overfitting(history, rising)
    assert (signal.since_step if signal else None) == since
    if signal:
        assert signal.condition_type == ConditionType.OVERFITTING_SUSPECTED
        assert f"since step {since}" in signal.message and "weight decay" in signal.message


@pytest.mark.parametrize(
    ("history", "first_train", "progress", "expected"),
    [
        (FLAT, 2.1, 1.0, True),
        (FLAT, 2.1, 0.3, False),  # too early to say
        (HEALTHY, 2.2, 1.0, False),
        (FLAT, 4.0, 1.0, False),  # train loss fell a lot from its first log
        (FLAT[:1], 2.1, 1.0, False),
    ],
)
def test_underfitting(history: list[Evaluation], first_train: float, progress: float, expected: bool) -> None:
    signal = underfitting(history, first_train, progress)
    assert (signal is not None) == expected
    if signal:
        assert signal.condition_type == ConditionType.UNDERFITTING_SUSPECTED and "more epochs" in signal.message


NAN = float("nan")
# The run of the issue: learning rate 0.5 on a 3.6-loss model; the train loss climbs to 48.
EXPLODING = curve((3.5, 3.6), (9.0, 12.0), (40.0, 48.0))
SPIKE_RECOVERED = curve((3.5, 3.6), (9.0, 12.0), (3.0, 3.0))
# Seen on the tiny model at learningRate 0.5: 6.6 -> 28.7, then back to 11: still above where it began.
STILL_ABOVE = curve((19.2, 28.7), (9.9, 11.0))


@pytest.mark.parametrize(
    ("history", "first_train", "since"),
    [
        (EXPLODING, 3.6, 20),
        (EXPLODING[:1], 3.6, None),  # one evaluation, nothing risen yet
        (EXPLODING[:2], 3.6, 20),  # no minimum progress: a diverged run only gets worse
        (SPIKE_RECOVERED, 3.6, None),  # back below its start: not diverging now
        (STILL_ABOVE, 6.6, 10),  # half-way back, still above its start: still diverged
        (curve((3.5, 3.6), (3.4, 7.1)), 3.6, None),  # just under twice its start
        (curve((3.5, 3.6), (NAN, 3.0)), 3.6, 20),  # the eval loss is no longer a number
        (curve((3.5, 3.6), (3.0, None)), 3.6, None),  # no train loss logged: nothing to read
        (FLAT, 2.1, None),  # under-fitting, not divergence
        (HEALTHY, 2.2, None),
        (EXPLODING, None, None),  # no train loss logged yet
    ],
)
def test_divergence(history: list[Evaluation], first_train: float | None, since: int | None) -> None:
    signal = diverged(history, first_train, learning_rate=0.5)
    assert (signal.since_step if signal else None) == since
    if signal:
        assert (signal.condition_type, signal.reason) == (ConditionType.UNDERFITTING_SUSPECTED, Reason.DIVERGED)
        assert "training diverged" in signal.message and "more epochs" not in signal.message
        assert "lower spec.hyperparameters.learningRate (now 0.5;" in signal.message
    if history is STILL_ABOVE and signal:
        assert "from 6.6 up to 28.7 and is 11 now" in signal.message
