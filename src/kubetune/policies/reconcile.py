"""The whole decision for one job at one instant: the state machine both supervisors run.

`decide(job, workers, now, progress)` composes the other policies into one answer: the status to
write, the workers to start and remove, the events to emit, whether the job itself is to be deleted
(ttlSecondsAfterFinished), and when to look again. It is level-triggered: it reads only the job (its
spec and the status written last time) and what is observed now, so a supervisor that restarts at any
moment, or runs it twice, reaches the same answer. Supervisors must write the status *before* acting on
the plan: the status is the memory (the attempt number, whether a failure was already counted).

States (phase) and how they move:

    (new) --launch--> Pending --all workers running--> Running --all succeeded--> Succeeded
    Pending/Running --retryable failure or disruption--> Restarting --gang gone + backoff--> Pending (attempt+1)
    Pending/Running --permanent failure, restarts exhausted, deadline--> Failed
    any active phase --spec.suspend--> Suspended --unsuspend + gang gone--> Pending (attempt+1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ProgressSnapshot
from kubetune.api.status import FINISHED_PHASES, ConditionType, FineTuneJobStatus, Reason
from kubetune.policies import deadlines, gang, retry, suspension
from kubetune.policies.gang import GangPlan
from kubetune.policies.observed import WorkerObservation, of_attempt
from kubetune.policies.retry import FailureKind, FailureVerdict
from kubetune.policies.status import (
    Event,
    apply_progress,
    apply_result,
    clear_condition,
    find_condition,
    set_condition,
    transition_events,
    with_fields,
    with_phase,
)


@dataclass(frozen=True)
class Decision:
    """Everything a supervisor does after one look at a job."""

    status: FineTuneJobStatus
    """The status to write (before acting on `plan`)."""
    plan: GangPlan
    """Workers to start and remove."""
    events: tuple[Event, ...] = ()
    """Events for the transitions between the previous status and this one."""
    delete_job: bool = False
    """ttlSecondsAfterFinished has passed: delete the job and everything it owns."""
    check_again_in: float | None = None
    """Seconds until something time-based will change (backoff, deadline, TTL); None: nothing pending."""
    counted_restart: bool = False
    """This decision counted a restart against maxRestarts (for the restarts metric)."""


def _soonest(*waits: float | None) -> float | None:
    present = [max(w, 0.0) for w in waits if w is not None]
    return min(present) if present else None


def _finish(status: FineTuneJobStatus, succeeded: bool, reason: str, message: str, now: datetime) -> FineTuneJobStatus:
    status = with_fields(status, completion_time=now)
    status = clear_condition(status, ConditionType.RUNNING, reason, message, now)
    status = clear_condition(status, ConditionType.RESTARTING, reason, message, now)
    kind = ConditionType.SUCCEEDED if succeeded else ConditionType.FAILED
    status = set_condition(status, kind, "True", reason, message, now)
    return with_phase(status, "Succeeded" if succeeded else "Failed", message)


def _ttl_left(job: FineTuneJob, status: FineTuneJobStatus, now: datetime) -> float | None:
    ttl = job.spec.ttl_seconds_after_finished
    if ttl is None or status.completion_time is None:
        return None
    return ttl - (now - status.completion_time).total_seconds()


def _decision(job: FineTuneJob, status: FineTuneJobStatus, plan: GangPlan, now: datetime, **kw: object) -> Decision:
    previous = job.status or FineTuneJobStatus()
    status = with_fields(status, observed_generation=job.metadata.generation)
    return Decision(status=status, plan=plan, events=tuple(transition_events(previous, status)), **kw)  # type: ignore[arg-type]


def _finished(
    job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime
) -> Decision:
    left = _ttl_left(job, prev, now)
    # A failed job leaves no pod behind (its cause is in the status and events); a succeeded job keeps its
    # terminated pods, which hold no resources, for their logs.
    plan = (
        gang.remove_all(workers, prev.attempt)
        if prev.phase == "Failed"
        else gang.remove_unfinished(workers, prev.attempt)
    )
    return _decision(job, prev, plan, now, delete_job=left is not None and left <= 0, check_again_in=_soonest(left))


def _fail(
    job: FineTuneJob,
    prev: FineTuneJobStatus,
    workers: Sequence[WorkerObservation],
    reason: str,
    message: str,
    now: datetime,
) -> Decision:
    status = _finish(prev, False, reason, message, now)
    return _decision(
        job, status, gang.remove_all(workers, prev.attempt), now, check_again_in=_ttl_left(job, status, now)
    )


def _suspend(
    job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime
) -> Decision:
    message = suspension.suspended_message(job, started=prev.start_time is not None)
    status = set_condition(prev, ConditionType.SUSPENDED, "True", Reason.SUSPENDED, message, now)
    status = clear_condition(status, ConditionType.RUNNING, Reason.SUSPENDED, message, now)
    status = with_phase(status, "Suspended", message)
    return _decision(job, status, gang.remove_all(workers, prev.attempt), now)


def _launch(job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime) -> Decision:
    """Start attempt N+1 once no worker of an older attempt is left."""
    if not gang.all_gone(workers):
        return _decision(job, prev, gang.remove_all(workers, prev.attempt), now)
    attempt = prev.attempt + 1
    size = job.spec.distributed.workers
    message = f"attempt {attempt}: created {size} worker(s)"
    status = with_fields(prev, attempt=attempt, start_time=prev.start_time or now)
    status = set_condition(status, ConditionType.CREATED, "True", Reason.GANG_CREATED, message, now)
    if prev.phase == "Suspended":
        status = clear_condition(
            status, ConditionType.SUSPENDED, Reason.RESUMED, suspension.resumed_message(attempt), now
        )
    status = with_phase(status, "Pending", f"attempt {attempt}: waiting for {size} worker(s) to start")
    return _decision(job, status, gang.launch(workers, attempt, size), now)


def _restarting(
    job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime
) -> Decision:
    """After a failure: remove the gang, wait out the backoff, then launch the next attempt."""
    since = find_condition(prev, ConditionType.RESTARTING)
    started = since.last_transition_time if since and since.last_transition_time else now
    wait = retry.backoff_seconds(job.spec.retry_policy, prev.restarts) - (now - started).total_seconds()
    if not gang.all_gone(workers) or wait > 0:
        later = wait if wait > 0 else None  # else: only the gang's removal is awaited (a change, not a time)
        return _decision(job, prev, gang.remove_all(workers, prev.attempt), now, check_again_in=later)
    return _launch(job, prev, workers, now)


def _verdict(
    job: FineTuneJob, workers: Sequence[WorkerObservation], attempt: int, now: datetime
) -> FailureVerdict | None:
    policy, size = job.spec.retry_policy, job.spec.distributed.workers
    memory = str((job.spec.resources.limits or {}).get("memory", "")) if job.spec.resources else ""
    current = of_attempt(workers, attempt)
    verdicts = [v for w in current if (v := retry.classify_worker(w, policy, memory or None)) is not None]
    verdicts += [v for w in current if (v := deadlines.startup_verdict(w, policy, now)) is not None]
    lost = gang.gang_broken(workers, attempt, size)
    if lost and not verdicts:
        names = ", ".join(str(i) for i in lost)
        message = f"worker(s) {names} of attempt {attempt} vanished or are being removed by someone else"
        verdicts.append(FailureVerdict(FailureKind.DISRUPTION, Reason.DISRUPTED, message, lost[0]))
    return retry.root_cause(verdicts)


def _after_failure(
    job: FineTuneJob,
    prev: FineTuneJobStatus,
    workers: Sequence[WorkerObservation],
    verdict: FailureVerdict,
    now: datetime,
) -> Decision:
    policy = job.spec.retry_policy
    if verdict.kind is FailureKind.PERMANENT:
        return _fail(job, prev, workers, verdict.reason, verdict.message, now)
    counted = verdict.kind is FailureKind.RETRYABLE
    if counted and not retry.restarts_left(policy, prev.restarts):
        message = f"{verdict.message}; gave up after {prev.restarts} restart(s) (retryPolicy.maxRestarts)"
        return _fail(job, prev, workers, Reason.RESTARTS_EXHAUSTED, message, now)
    restarts = prev.restarts + (1 if counted else 0)
    wait = retry.backoff_seconds(policy, restarts)
    note = "not counted against maxRestarts" if not counted else f"restart {restarts} of {policy.max_restarts}"
    message = f"{verdict.message}; restarting the gang from the last checkpoint in {wait:.0f}s ({note})"
    status = with_fields(prev, restarts=restarts)
    status = set_condition(status, ConditionType.RESTARTING, "True", verdict.reason, message, now)
    status = clear_condition(status, ConditionType.RUNNING, verdict.reason, message, now)
    status = with_phase(status, "Restarting", message)
    plan = gang.remove_all(workers, prev.attempt)
    return _decision(job, status, plan, now, check_again_in=wait, counted_restart=counted)


def _succeeded(
    job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime
) -> Decision:
    result = next((w.result for w in of_attempt(workers, prev.attempt) if w.index == 0), None)
    early = result is not None and (result.outcome == "EarlyStopped" or result.reason == "EarlyStopped")
    status = apply_result(prev, result, now)
    if early and result is not None:
        status = set_condition(status, ConditionType.EARLY_STOPPED, "True", Reason.EARLY_STOPPED, result.message, now)
        status = _finish(status, True, Reason.EARLY_STOPPED, f"stopped early: {result.message}", now)
    else:
        message = result.message if result is not None else "all workers finished"
        status = _finish(status, True, Reason.TRAINING_COMPLETED, message, now)
    return _decision(
        job, status, gang.remove_unfinished(workers, prev.attempt), now, check_again_in=_ttl_left(job, status, now)
    )


def _active(
    job: FineTuneJob,
    prev: FineTuneJobStatus,
    workers: Sequence[WorkerObservation],
    now: datetime,
    progress: ProgressSnapshot | None,
) -> Decision:
    attempt, size = prev.attempt, job.spec.distributed.workers
    verdict = _verdict(job, workers, attempt, now)
    if verdict is not None:
        return _after_failure(job, prev, workers, verdict, now)
    current = of_attempt(workers, attempt)
    if len(current) == size and all(w.state == "succeeded" for w in current):
        return _succeeded(job, prev, workers, now)
    status = apply_progress(prev, progress, attempt, now)
    running = len(current) == size and all(w.state in ("running", "succeeded") for w in current)
    if running:
        message = f"attempt {attempt}: {size} worker(s) training"
        status = set_condition(status, ConditionType.RUNNING, "True", Reason.WORKERS_RUNNING, message, now)
        status = clear_condition(status, ConditionType.RESTARTING, Reason.WORKERS_RUNNING, message, now)
        status = with_phase(status, "Running", message)
    elif prev.phase != "Running":
        pending = size - sum(w.state != "pending" for w in current)
        status = with_phase(status, "Pending", f"attempt {attempt}: waiting for {pending} worker(s) to start")
    checks = [deadlines.startup_check_in(w, job.spec.retry_policy, now) for w in current]
    return _decision(job, status, gang.keep(workers, attempt, size), now, check_again_in=_soonest(*checks))


def decide(
    job: FineTuneJob, workers: Sequence[WorkerObservation], now: datetime, progress: ProgressSnapshot | None = None
) -> Decision:
    """The decision for `job` (whose `status` is the one written last time) given every worker observed
    now (any attempt) and rank 0's latest progress snapshot."""
    prev = job.status or FineTuneJobStatus()
    if prev.phase in FINISHED_PHASES:
        return _finished(job, prev, workers, now)
    left = deadlines.active_deadline_left(job.spec, prev, now)
    if left is not None and left <= 0:
        message = f"the job ran longer than activeDeadlineSeconds ({job.spec.active_deadline_seconds}s)"
        decision = _fail(job, prev, workers, Reason.DEADLINE_EXCEEDED, message, now)
        return Decision(
            decision.status,
            gang.remove_all(workers, prev.attempt),
            decision.events,
            check_again_in=decision.check_again_in,
        )
    if job.spec.suspend:
        return _suspend(job, prev, workers, now)
    if prev.attempt == 0 or prev.phase == "Suspended":
        decision = _launch(job, prev, workers, now)
    elif prev.phase == "Restarting":
        decision = _restarting(job, prev, workers, now)
    else:
        decision = _active(job, prev, workers, now, progress)
    if left is not None:
        return replace(decision, check_again_in=_soonest(decision.check_again_in, left))
    return decision
