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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ExitReason, ProgressSnapshot
from kubetune.api.status import FINISHED_PHASES, ConditionType, FineTuneJobStatus, Phase, Reason
from kubetune.policies import deadlines, gang, node_loss, queueing, retry, suspension
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


def _completed_status(
    status: FineTuneJobStatus, succeeded: bool, reason: str, message: str, now: datetime
) -> FineTuneJobStatus:
    """`status` as the job ends: Succeeded or Failed, with its completion time and conditions."""
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


def _conclude(
    job: FineTuneJob,
    status: FineTuneJobStatus,
    plan: GangPlan,
    *,
    delete_job: bool = False,
    check_again_in: float | None = None,
    counted_restart: bool = False,
) -> Decision:
    """The `Decision` for a new status and plan: stamps observedGeneration and derives the events from the
    status written last time (`job.status`)."""
    previous = job.status or FineTuneJobStatus()
    status = with_fields(status, observed_generation=job.metadata.generation)
    return Decision(
        status=status,
        plan=plan,
        events=tuple(transition_events(previous, status)),
        delete_job=delete_job,
        check_again_in=check_again_in,
        counted_restart=counted_restart,
    )


def _waiting_for_workers(status: FineTuneJobStatus, attempt: int, waiting: int, now: datetime) -> FineTuneJobStatus:
    """Pending while the gang of `attempt` starts. A Running condition left False by the previous attempt
    (its failure, a suspension) now says why the job is not running: WorkersPending. On the first attempt
    there is none, and none is added (conditions that never applied are not listed)."""
    message = f"attempt {attempt}: waiting for {waiting} worker(s) to start"
    status = clear_condition(status, ConditionType.RUNNING, Reason.WORKERS_PENDING, message, now)
    return with_phase(status, "Pending", message)


def _already_finished(
    job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime
) -> Decision:
    """A job that ended earlier: remove what its end left behind, and delete it once its TTL has passed."""
    left = _ttl_left(job, prev, now)
    # A failed job leaves no pod behind (its cause is in the status and events); a succeeded job keeps its
    # terminated pods, which hold no resources, for their logs.
    plan = (
        gang.remove_all(workers, prev.attempt)
        if prev.phase == "Failed"
        else gang.remove_unfinished(workers, prev.attempt)
    )
    return _conclude(job, prev, plan, delete_job=left is not None and left <= 0, check_again_in=_soonest(left))


def _fail(
    job: FineTuneJob,
    prev: FineTuneJobStatus,
    workers: Sequence[WorkerObservation],
    reason: str,
    message: str,
    now: datetime,
) -> Decision:
    status = _completed_status(prev, False, reason, message, now)
    return _conclude(job, status, gang.remove_all(workers, prev.attempt), check_again_in=_ttl_left(job, status, now))


def refuse_launch(
    job: FineTuneJob, workers: Sequence[WorkerObservation], reason: str, message: str, now: datetime
) -> Decision:
    """Fail `job` instead of launching its next attempt: what a supervisor's check before a launch (the
    operator's claims check, kubetune.policies.storage) does when the gang cannot run."""
    return _fail(job, job.status or FineTuneJobStatus(), workers, reason, message, now)


def _suspend(
    job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime
) -> Decision:
    message = suspension.suspended_message(job, started=prev.start_time is not None)
    status = set_condition(prev, ConditionType.SUSPENDED, "True", Reason.SUSPENDED, message, now)
    status = clear_condition(status, ConditionType.RUNNING, Reason.SUSPENDED, message, now)
    status = with_phase(status, "Suspended", message)
    return _conclude(job, status, gang.remove_all(workers, prev.attempt))


def _launch(
    job: FineTuneJob,
    prev: FineTuneJobStatus,
    workers: Sequence[WorkerObservation],
    now: datetime,
    progress: ProgressSnapshot | None = None,
) -> Decision:
    """Start attempt N+1 once no worker of an older attempt is left (a `_Step`; there is no progress of the
    new attempt to read yet)."""
    if not gang.all_gone(workers):
        return _conclude(job, prev, gang.remove_all(workers, prev.attempt))
    attempt = prev.attempt + 1
    size = job.spec.distributed.workers
    status = with_fields(prev, attempt=attempt)  # Created and startTime follow once the workers exist
    if prev.phase == "Suspended":
        status = clear_condition(
            status, ConditionType.SUSPENDED, Reason.RESUMED, suspension.resumed_message(attempt), now
        )
    status = _waiting_for_workers(status, attempt, size, now)
    return _conclude(job, status, gang.launch(workers, attempt, size))


def _restarting(
    job: FineTuneJob,
    prev: FineTuneJobStatus,
    workers: Sequence[WorkerObservation],
    now: datetime,
    progress: ProgressSnapshot | None = None,
) -> Decision:
    """After a failure: remove the gang, wait out the backoff, then launch the next attempt (a `_Step`; the
    failed attempt's progress is not read). The Restarting condition keeps the failure as its reason and
    says when the next attempt starts, so the wait has no reason of its own."""
    since = find_condition(prev, ConditionType.RESTARTING)
    started = since.last_transition_time if since and since.last_transition_time else now
    wait = retry.backoff_seconds(job.spec.retry_policy, prev.restarts) - (now - started).total_seconds()
    if not gang.all_gone(workers) or wait > 0:
        later = wait if wait > 0 else None  # else: only the gang's removal is awaited (a change, not a time)
        return _conclude(job, prev, gang.remove_all(workers, prev.attempt), check_again_in=later)
    return _launch(job, prev, workers, now)


def _verdict(
    job: FineTuneJob, workers: Sequence[WorkerObservation], attempt: int, now: datetime
) -> FailureVerdict | None:
    policy, size = job.spec.retry_policy, job.spec.distributed.workers
    memory = str((job.spec.resources.limits or {}).get("memory", "")) if job.spec.resources else ""
    current = of_attempt(workers, attempt)
    verdicts = [v for w in current if (v := retry.classify_worker(w, policy, memory or None)) is not None]
    verdicts += deadlines.startup_verdicts(job, current, now)  # judged by the relaunch's cause
    if (lost_node := node_loss.verdict(job, workers, attempt, now)) is not None:
        verdicts.append(lost_node)
    lost = gang.gang_broken(workers, attempt, size)
    if lost and not verdicts:
        names = ", ".join(str(i) for i in lost)
        message = f"worker(s) {names} of attempt {attempt} vanished or are being removed by someone else"
        verdicts.append(FailureVerdict(FailureKind.DISRUPTION, Reason.DISRUPTED, message, lost[0]))
    cause = retry.root_cause(verdicts)
    return None if cause is None or node_loss.awaits_attribution(cause, workers, attempt, now) else cause


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
    return _conclude(job, status, plan, check_again_in=wait, counted_restart=counted)


def _succeeded(
    job: FineTuneJob, prev: FineTuneJobStatus, workers: Sequence[WorkerObservation], now: datetime
) -> Decision:
    result = next((w.result for w in of_attempt(workers, prev.attempt) if w.index == 0), None)
    early = result is not None and (
        result.outcome == "EarlyStopped" or result.reason == ExitReason.EARLY_STOPPED.wire_name
    )
    status = apply_result(prev, result, now)
    if early and result is not None:
        status = set_condition(status, ConditionType.EARLY_STOPPED, "True", Reason.EARLY_STOPPED, result.message, now)
        status = _completed_status(status, True, Reason.EARLY_STOPPED, f"stopped early: {result.message}", now)
    else:
        message = result.message if result is not None else "all workers finished"
        status = _completed_status(status, True, Reason.TRAINING_COMPLETED, message, now)
    return _conclude(
        job, status, gang.remove_unfinished(workers, prev.attempt), check_again_in=_ttl_left(job, status, now)
    )


def _active(
    job: FineTuneJob,
    prev: FineTuneJobStatus,
    workers: Sequence[WorkerObservation],
    now: datetime,
    progress: ProgressSnapshot | None,
) -> Decision:
    """Follow the current attempt (a `_Step`): its failure, its success, or its workers starting and training."""
    attempt, size = prev.attempt, job.spec.distributed.workers
    verdict = _verdict(job, workers, attempt, now)
    if verdict is not None:
        return _after_failure(job, prev, workers, verdict, now)
    current = of_attempt(workers, attempt)
    if len(current) == size and all(w.state == "succeeded" for w in current):
        return _succeeded(job, prev, workers, now)
    status = apply_progress(prev, progress, attempt, now)
    if len(current) == size:
        status = _created(status, attempt, size, now)
    running = len(current) == size and all(w.state in ("running", "succeeded") for w in current)
    events: tuple[Event, ...] = ()
    if running:
        message = f"attempt {attempt}: {size} worker(s) training"
        status = set_condition(status, ConditionType.RUNNING, "True", Reason.WORKERS_RUNNING, message, now)
        status = clear_condition(status, ConditionType.RESTARTING, Reason.WORKERS_RUNNING, message, now)
        status = with_phase(status, "Running", message)
    elif not current and _creation_refused(prev):
        pass  # the refusal's reason and message stay until a create succeeds (see `refused`)
    elif prev.phase != "Running":
        status = _waiting_for_workers(status, attempt, size - sum(w.state != "pending" for w in current), now)
        status, events = deadlines.waiting_status(job, status, current, now)  # Unschedulable, Preempted, ...
    checks = deadlines.check_in(job, current, now)
    decision = _conclude(job, status, gang.keep(workers, attempt, size), check_again_in=_soonest(*checks))
    return replace(decision, events=decision.events + events) if events else decision


def _created(status: FineTuneJobStatus, attempt: int, size: int, now: datetime) -> FineTuneJobStatus:
    """Record the gang of `attempt` as created (its Created condition, the job's startTime): only once every
    worker is observed, so a refused create is never reported as done."""
    message = f"attempt {attempt}: created {size} worker(s)"
    status = with_fields(status, start_time=status.start_time or now)
    return set_condition(status, ConditionType.CREATED, "True", Reason.GANG_CREATED, message, now)


def _creation_refused(status: FineTuneJobStatus) -> bool:
    created = find_condition(status, ConditionType.CREATED)
    return created is not None and created.status == "False"


@dataclass(frozen=True)
class CreateRefusal:
    """The API server refused to create a worker (the supervisor's observation of that refusal)."""

    retryable: bool
    """True: the job waits (a quota, the operator's own permissions) and creating is retried; False: the spec
    produced a pod the cluster will never accept, the job fails."""
    reason: str
    message: str


def refused(job: FineTuneJob, workers: Sequence[WorkerObservation], refusal: CreateRefusal, now: datetime) -> Decision:
    """The decision after the server refused a worker of the current attempt (the status written by the
    decision that asked for it is `job.status`). A gang is all or nothing: the workers already created are
    removed, so a partial gang neither holds quota nor waits at a rendezvous that cannot complete. A
    retryable refusal keeps the job Pending with Created=False naming the cause (not counted as a
    restart); anything else fails the job. Either way the refusal is a Warning Event."""
    prev = job.status or FineTuneJobStatus()
    event = Event("Warning", refusal.reason, refusal.message)
    if not refusal.retryable:
        decision = _fail(job, prev, workers, refusal.reason, refusal.message, now)
        return replace(decision, events=(*decision.events, event))
    message = f"attempt {prev.attempt}: {refusal.message}"
    status = set_condition(prev, ConditionType.CREATED, "False", refusal.reason, message, now)
    status = with_phase(status, "Pending", message)
    decision = _conclude(job, status, gang.remove_all(workers, prev.attempt))
    return replace(decision, events=(*decision.events, event))


#: One step of an active job: (job, status written last time, workers, now, rank 0's progress) -> decision.
_Step = Callable[
    [FineTuneJob, FineTuneJobStatus, Sequence[WorkerObservation], datetime, ProgressSnapshot | None], Decision
]

#: The step of each active phase that needs more than following the current attempt.
_STEP_OF_PHASE: Mapping[Phase, _Step] = {
    "Suspended": _launch,  # unsuspended: start the next attempt once the old gang is gone
    "Restarting": _restarting,
}
#: Pending and Running: follow the current attempt. (A job never launched, attempt 0, launches instead.)
_DEFAULT_STEP: _Step = _active


def decide(
    job: FineTuneJob,
    workers: Sequence[WorkerObservation],
    now: datetime,
    progress: ProgressSnapshot | None = None,
    queue: queueing.WorkloadObservation | queueing.QueueingUnavailable | None = None,
) -> Decision:
    """The decision for `job` (status: the one written last time), every worker now, rank 0's progress, its Workload."""
    prev = job.status or FineTuneJobStatus()
    if prev.phase in FINISHED_PHASES:
        return _already_finished(job, prev, workers, now)
    left = deadlines.active_deadline_left(job.spec, prev, now)
    if left is not None and left <= 0:
        message = f"the job ran longer than activeDeadlineSeconds ({job.spec.active_deadline_seconds}s)"
        return _fail(job, prev, workers, Reason.DEADLINE_EXCEEDED, message, now)
    if (held := queueing.hold(job, workers, queue, now)) is not None:  # a queued job runs only while admitted
        decision = _conclude(job, *held)
        return replace(decision, events=queueing.held_events(job.status, decision.status, decision.events))
    prev = queueing.admitted(job, prev, queue, now)
    if job.spec.suspend:
        return _suspend(job, prev, workers, now)
    step = _launch if prev.attempt == 0 else _STEP_OF_PHASE.get(prev.phase, _DEFAULT_STEP)
    decision = step(job, prev, workers, now, progress)
    plan = node_loss.with_force_deletions(decision.plan, job, workers, now)
    later = _soonest(decision.check_again_in, node_loss.check_in(job, workers, now))
    decision = replace(decision, plan=plan, check_again_in=later)
    return replace(decision, check_again_in=_soonest(decision.check_again_in, left))  # `left` None: unchanged
