"""What the status says: phase, conditions, progress and the events that mark each transition.

The status is always written from what was observed, never from what was intended, so these helpers
build a new `FineTuneJobStatus` from the previous one: a condition keeps its `lastTransitionTime`
until its status actually changes (as Kubernetes' meta.SetStatusCondition does), progress comes only
from rank 0 of the current attempt, and every transition is also an event (`transition_events`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from kubetune.api.outcome import (
    TERMINATION_MESSAGE_LIMIT,
    EarlierJob,
    FitReport,
    ProgressSnapshot,
    TrainerResult,
)
from kubetune.api.status import (
    Condition,
    ConditionType,
    FineTuneJobStatus,
    Metrics,
    OutputStatus,
    Phase,
    Progress,
    Reason,
)

ConditionStatus = Literal["True", "False", "Unknown"]

#: Conditions whose turning True is bad news (a Warning event).
WARNING_CONDITIONS = frozenset(
    {
        ConditionType.FAILED,
        ConditionType.RESTARTING,
        ConditionType.PROGRESS_UNAVAILABLE,
        ConditionType.RESULT_INCOMPLETE,
        ConditionType.NODE_OUTAGE,
    }
)

#: Conditions whose turning False (from True) is news too: an Event with the reason it turned False with.
ANNOUNCED_WHEN_CLEARED = frozenset({ConditionType.SUSPENDED, ConditionType.NODE_OUTAGE})


@dataclass(frozen=True)
class Event:
    """A Kubernetes-style event: what happened to the job, for people watching it."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def find_condition(status: FineTuneJobStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


#: Longest condition or phase message kept, in characters: messages may carry what a trainer said (a fit report, a
#: result), which an author's image chooses; a status is stored whole in etcd and in every watcher's cache.
MAX_CONDITION_MESSAGE = 4096


def set_condition(
    status: FineTuneJobStatus, type_: str, value: ConditionStatus, reason: str, message: str, now: datetime
) -> FineTuneJobStatus:
    """The status with one condition set; `lastTransitionTime` moves only when `value` changes. A message
    longer than MAX_CONDITION_MESSAGE is cut, marked with "..." (as the phase's, `with_phase`)."""
    message = _cut(message)
    old = find_condition(status, type_)
    moved = old is None or old.status != value or old.last_transition_time is None
    when = now if moved or old is None else old.last_transition_time
    new = Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=when)
    conditions = [new if c.type == type_ else c for c in status.conditions]
    if old is None:
        conditions.append(new)
    return status.model_copy(update={"conditions": conditions})


def clear_condition(
    status: FineTuneJobStatus, type_: str, reason: str, message: str, now: datetime
) -> FineTuneJobStatus:
    """Set a condition False, but only if it exists (conditions that never applied are not listed)."""
    if find_condition(status, type_) is None:
        return status
    return set_condition(status, type_, "False", reason, message, now)


def with_fields(status: FineTuneJobStatus, **fields: Any) -> FineTuneJobStatus:
    """The status with fields replaced (validated: a wrong field name raises)."""
    return FineTuneJobStatus.model_validate({**dict(status), **fields})


def _cut(message: str) -> str:
    return message if len(message) <= MAX_CONDITION_MESSAGE else message[: MAX_CONDITION_MESSAGE - 3] + "..."


def with_phase(status: FineTuneJobStatus, phase: Phase, message: str) -> FineTuneJobStatus:
    return with_fields(status, phase=phase, message=_cut(message))


def apply_fit(status: FineTuneJobStatus, reports: Sequence[FitReport], now: datetime) -> FineTuneJobStatus:
    """Fit diagnostics as conditions: a sign that is present is set True; one that went away is set False
    only if its condition exists (conditions that never applied are not listed)."""
    for report in reports:
        if report.status == "True":
            status = set_condition(status, report.type, "True", report.reason, report.message, now)
        else:
            status = clear_condition(status, report.type, report.reason, report.message, now)
    return status


def apply_progress(
    status: FineTuneJobStatus, snapshot: ProgressSnapshot | None, attempt: int, now: datetime
) -> FineTuneJobStatus:
    """Progress, metrics and fit diagnostics from rank 0's snapshot, if it belongs to the current attempt
    (a snapshot of an older attempt, or none, leaves the last known figures in place)."""
    if snapshot is None or (snapshot.attempt is not None and snapshot.attempt != attempt):
        return status
    status = with_fields(status, progress=snapshot.progress, metrics=snapshot.metrics)
    return apply_adoption(apply_fit(status, snapshot.fit, now), snapshot.resumed_from_job, now)


def apply_adoption(status: FineTuneJobStatus, earlier: EarlierJob | None, now: datetime) -> FineTuneJobStatus:
    """CheckpointsAdopted, naming the earlier job whose checkpoints the trainer continues (the same manifest
    applied again: kubetune.policies.folder_owner). Its turning True is the Normal Event; it stays True for
    the job's life (later attempts resume the job's own checkpoints and report no earlier job)."""
    if earlier is None:
        return status
    where = f"{earlier.namespace}/" if earlier.namespace else ""
    message = (
        f"resumed the checkpoints that FineTuneJob {where}{earlier.name} (uid {earlier.uid or 'unknown'}) left in "
        f"{earlier.checkpoints}: the same model, data, method and hyperparameters, so this job continues that run"
    )
    return set_condition(
        status, ConditionType.CHECKPOINTS_ADOPTED, "True", Reason.RESUMED_FROM_EARLIER_JOB, message, now
    )


def apply_result(status: FineTuneJobStatus, result: TrainerResult | None, now: datetime) -> FineTuneJobStatus:
    """Final figures from the trainer's result: steps, best metric, output path, evaluation."""
    if result is None:
        return status
    total = result.total_steps or result.step
    percent = 100 if result.outcome in ("Succeeded", "EarlyStopped") else min(100, 100 * result.step // max(total, 1))
    previous = status.progress or Progress()
    progress = previous.model_copy(
        update={"step": result.step, "total_steps": total, "percent": percent, "eta_seconds": 0}
    )
    latest = result.metrics or Metrics()
    # Field by field, not model_dump(): a nested block (DPO's rewards) must stay a model, not become a dict.
    figures = {name: getattr(latest, name) for name in Metrics.model_fields if getattr(latest, name) is not None}
    figures |= {"best_step": result.best_step} if result.best_step is not None else {}
    metrics = (status.metrics or Metrics()).model_copy(update=figures)
    fields: dict[str, Any] = {"progress": progress, "metrics": metrics}
    if result.output_path:
        fields["output"] = OutputStatus(path=result.output_path)
    if result.evaluation is not None:
        fields["evaluation"] = result.evaluation
    status = apply_adoption(with_fields(status, **fields), result.resumed_from_job, now)
    return _note_shortened(apply_fit(status, result.fit, now), result, now)


def _note_shortened(status: FineTuneJobStatus, result: TrainerResult, now: datetime) -> FineTuneJobStatus:
    """A shortened result (a termination message too small for the whole one, see TrainerResult.
    termination_message) is applied as far as it goes, and a condition says so and where the whole one is,
    instead of the missing fields vanishing silently."""
    if result.result_file is None:
        return status
    message = (
        f"the whole trainer result did not reach the operator (rank 0's GET /result on port 9400), and the "
        f"termination message (at most {TERMINATION_MESSAGE_LIMIT} bytes) carried a shortened one: evaluation "
        f"rows, the verdict or fit diagnostics may be missing from this status; the whole result is in "
        f"{result.result_file}"
    )
    return set_condition(status, ConditionType.RESULT_INCOMPLETE, "True", Reason.RESULT_NOT_HANDED_OVER, message, now)


def transition_events(previous: FineTuneJobStatus, current: FineTuneJobStatus) -> list[Event]:
    """One event per condition that became True (or changed reason while True), plus one when a
    condition that was True turns False with a reason of its own (e.g. Suspended -> JobResumed)."""
    events: list[Event] = []
    for condition in current.conditions:
        old = find_condition(previous, condition.type)
        unchanged = old is not None and (old.status, old.reason) == (condition.status, condition.reason)
        if unchanged or (condition.status != "True" and (old is None or old.status != "True")):
            continue
        if condition.status != "True" and condition.type not in ANNOUNCED_WHEN_CLEARED:
            continue
        kind: Literal["Normal", "Warning"] = (
            "Warning" if condition.type in WARNING_CONDITIONS and condition.status == "True" else "Normal"
        )
        events.append(Event(kind, condition.reason or condition.type, condition.message))
    return events
