"""The fit reports the trainer publishes: a diverging run reads TrainingDiverged, never a plateau."""

from __future__ import annotations

import pytest

from kubetune.api.outcome import FitReport
from kubetune.api.status import ConditionType, Reason
from kubetune.trainer.diagnostics import FitHistory


def history(*points: tuple[int, float, float]) -> FitHistory:
    fit = FitHistory()
    fit.record_train_loss(points[0][2])
    for step, eval_loss, train_loss in points:
        fit.record_evaluation(step, eval_loss, train_loss)
    return fit


@pytest.mark.parametrize(
    ("fit", "reason"),
    [
        (history((10, 3.5, 3.6), (20, 9.0, 12.0), (30, 40.0, 48.0)), Reason.DIVERGED),  # 3.6 -> 48
        (history((10, 3.5, 3.6), (20, 3.45, 3.5), (30, 3.4, 3.45)), Reason.UNDERFITTING),  # a true plateau
        (history((10, 3.5, 3.6), (20, 2.0, 2.1), (30, 1.0, 1.1)), Reason.HEALTHY_FIT),
    ],
)
def test_the_underfitting_report_names_what_happened(fit: FitHistory, reason: str) -> None:
    reports: dict[str, FitReport] = {r.type: r for r in fit.reports(3, progress=1.0, learning_rate=0.5)}
    under = reports[ConditionType.UNDERFITTING_SUSPECTED]
    assert under.reason == reason and (under.status == "True") == (reason != Reason.HEALTHY_FIT)
    assert reports[ConditionType.OVERFITTING_SUSPECTED].status == "False"
    if reason == Reason.DIVERGED:
        assert "3.6 to 48" in under.message and "learningRate (now 0.5;" in under.message


def test_divergence_is_reported_from_the_first_evaluation_on() -> None:
    fit = FitHistory()
    fit.record_train_loss(3.6)
    fit.record_evaluation(10, float("nan"), 12.0)
    assert [r.reason for r in fit.reports(3, progress=0.1)] == [Reason.HEALTHY_FIT, Reason.DIVERGED]
    calm = FitHistory()
    calm.record_train_loss(3.6)
    calm.record_evaluation(10, 3.0, 3.0)
    assert calm.reports(3, progress=0.1) == [], "one healthy evaluation: nothing to compare yet"
