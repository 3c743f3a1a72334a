"""Fit diagnostics as a table: loss curves in, warning signs out."""

from __future__ import annotations

import pytest

from kubetune.api.status import ConditionType
from kubetune.policies.fit import Evaluation, overfitting, underfitting


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
