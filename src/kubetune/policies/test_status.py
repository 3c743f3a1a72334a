"""Conditions keep their transition time until they change; events mark every transition."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import pytest

from kubetune.api.outcome import FitReport, TrainerResult
from kubetune.api.status import ConditionType, FineTuneJobStatus, Metrics, PreferenceFigures, Reason
from kubetune.policies.status import (
    MAX_CONDITION_MESSAGE,
    apply_fit,
    apply_result,
    find_condition,
    set_condition,
    transition_events,
)

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=5)


def test_set_condition_moves_the_transition_time_only_on_change() -> None:
    status = set_condition(FineTuneJobStatus(), ConditionType.RUNNING, "True", Reason.WORKERS_RUNNING, "a", T0)
    same = set_condition(status, ConditionType.RUNNING, "True", Reason.WORKERS_RUNNING, "b", T1)
    flipped = set_condition(same, ConditionType.RUNNING, "False", Reason.DISRUPTED, "c", T1)
    times = [find_condition(s, ConditionType.RUNNING).last_transition_time for s in (status, same, flipped)]  # type: ignore[union-attr]
    assert times == [T0, T0, T1] and len(flipped.conditions) == 1


def cond(type_: str, value: str, reason: str) -> FineTuneJobStatus:
    return set_condition(FineTuneJobStatus(), type_, value, reason, "m", T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("before", "after", "events"),
    [
        (FineTuneJobStatus(), cond("Created", "True", Reason.GANG_CREATED), [("Normal", Reason.GANG_CREATED)]),
        (cond("Created", "True", Reason.GANG_CREATED), cond("Created", "True", Reason.GANG_CREATED), []),
        (FineTuneJobStatus(), cond("Restarting", "True", Reason.OUT_OF_MEMORY), [("Warning", Reason.OUT_OF_MEMORY)]),
        (
            cond("Restarting", "True", Reason.DISRUPTED),
            cond("Restarting", "True", Reason.OUT_OF_MEMORY),
            [("Warning", Reason.OUT_OF_MEMORY)],
        ),
        (FineTuneJobStatus(), cond("Failed", "True", Reason.DATA_ERROR), [("Warning", Reason.DATA_ERROR)]),
        (
            cond("Suspended", "True", Reason.SUSPENDED),
            cond("Suspended", "False", Reason.RESUMED),
            [("Normal", Reason.RESUMED)],
        ),
        (cond("Running", "True", Reason.WORKERS_RUNNING), cond("Running", "False", Reason.DISRUPTED), []),
        (FineTuneJobStatus(), cond("Running", "False", Reason.DISRUPTED), []),
    ],
)
def test_transition_events(before: FineTuneJobStatus, after: FineTuneJobStatus, events: list[tuple[str, str]]) -> None:
    assert [(e.type, e.reason) for e in transition_events(before, after)] == events


def test_apply_result_reports_final_figures() -> None:
    result = TrainerResult(
        outcome="EarlyStopped",
        reason="EarlyStopped",
        message="m",
        retryable=False,
        step=30,
        total_steps=100,
        best_step=20,
        output_path="/o",
    )
    status = apply_result(FineTuneJobStatus(), result, T0)
    assert status.progress is not None and (status.progress.step, status.progress.percent) == (30, 100)
    assert status.metrics is not None and status.metrics.best_step == 20
    assert status.output is not None and status.output.path == "/o"


def test_apply_result_keeps_the_dpo_reward_blocks_models() -> None:
    """Found by the DPO scenario: dumped to dicts, the nested blocks made the status write warn."""
    rewards = PreferenceFigures(reward_accuracy=0.75, reward_margin=1.5)
    result = TrainerResult(
        outcome="Succeeded",
        reason="Succeeded",
        message="m",
        retryable=False,
        step=12,
        total_steps=12,
        metrics=Metrics(train_loss=0.3, train_rewards=rewards, eval_rewards=rewards),
    )
    status = apply_result(FineTuneJobStatus(metrics=Metrics(learning_rate=1e-4)), result, T0)
    assert status.metrics is not None and status.metrics.train_rewards == rewards == status.metrics.eval_rewards
    assert status.metrics.learning_rate == 1e-4 and status.metrics.train_loss == 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wire = status.to_wire()
    assert wire["metrics"]["trainRewards"] == {"rewardAccuracy": 0.75, "rewardMargin": 1.5}


def _fit(status: str, reason: str) -> FitReport:
    return FitReport(type="OverfittingSuspected", status=status, reason=reason, message=reason, since_step=20)


@pytest.mark.parametrize(
    ("before", "reports", "after"),
    [
        ([], [], None),
        ([], [_fit("False", "FitLooksHealthy")], None),  # never suspected: no condition listed
        ([], [_fit("True", "EvalLossRising")], ("True", "EvalLossRising")),
        ([_fit("True", "EvalLossRising")], [_fit("False", "FitLooksHealthy")], ("False", "FitLooksHealthy")),
    ],
)
def test_fit_reports_become_conditions(
    before: list[FitReport], reports: list[FitReport], after: tuple[str, str] | None
) -> None:
    status = apply_fit(apply_fit(FineTuneJobStatus(), before, T0), reports, T0 + timedelta(seconds=5))
    condition = find_condition(status, "OverfittingSuspected")
    assert (None if condition is None else (condition.status, condition.reason)) == after


def test_a_message_a_trainer_chose_is_cut_to_the_limit() -> None:
    """A fit report's message comes from the trainer's image: a megabyte of it never reaches the status."""
    report = FitReport(type="OverfittingSuspected", status="True", reason="EvalLossRising", message="x" * 1_000_000)
    condition = find_condition(apply_fit(FineTuneJobStatus(), [report], T0), "OverfittingSuspected")
    assert condition is not None and len(condition.message) == MAX_CONDITION_MESSAGE
    assert condition.message.endswith("...")
