"""Queueing through Kueue: whether a queued job may run its gang now, and what it says while it may not.

A job with `spec.scheduling.queueName` is run as a Kueue *external framework*: the operator creates one
Kueue Workload for it (one pod set of `workers` pods) and Kueue decides when the whole gang fits the
team's quota. This module is the pure half of that contract; the operator's `workloads` module turns a
Workload into the `WorkloadObservation` below and carries out what is decided here:

- not admitted yet: no pod exists. The job is Pending with Admitted=False, reason Queued, naming the
  LocalQueue and giving Kueue's own words ("couldn't assign flavors to pod set workers: ...");
- admitted: the gang launches, with the admitted flavors' node labels and tolerations (`placed`);
- evicted (preempted, an admission check withdrawn, the Workload deactivated) or the admission gone:
  the gang is removed exactly as `spec.suspend` removes it (checkpoints kept, phase Suspended), and once
  it is gone the operator gives the quota back (`release_admission`); when Kueue admits the Workload
  again the next attempt resumes from the last checkpoint;
- finished (Succeeded or Failed): the Workload is marked Finished so that its quota is released
  (`finished_reason`).

A job created with `spec.suspend: true` and a queue name follows Kueue's convention for its own
integrations: it waits for admission, and admission unsuspends it (`unsuspend_on_admission`).

A queue is a team's quota: a job that names one is never run unqueued. When the operator cannot queue it
(its Kueue integration off, or Kueue not installed) the job waits with no pod, Pending with Admitted=False
and reason QueueUnavailable (`QueueingUnavailable`), until an operator that can queue it takes over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune.api.job import FineTuneJob
from kubetune.api.status import ConditionType, FineTuneJobStatus, Phase, Reason
from kubetune.policies import gang, suspension
from kubetune.policies.gang import GangPlan
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.status import Event, clear_condition, find_condition, set_condition, with_phase

#: The pod set of a FineTuneJob's Workload: every worker pod is alike, so there is exactly one.
POD_SET = "workers"


@dataclass(frozen=True)
class WorkloadObservation:
    """What the operator read from the job's Kueue Workload (kueue.x-k8s.io/v1beta2)."""

    name: str
    """metadata.name of the Workload."""
    admitted: bool = False
    """Condition Admitted is True (quota reserved and every admission check ready)."""
    quota_reserved: bool = False
    """status.admission is set: the Workload holds quota in a ClusterQueue."""
    evicted: str | None = None
    """Condition Evicted while it is True, as "<reason>: <message>" (Preempted, AdmissionCheck, ...)."""
    pending: str | None = None
    """Kueue's message while the Workload waits (condition QuotaReserved False, e.g. "couldn't assign
    flavors to pod set workers: insufficient quota for cpu in flavor default-flavor ...")."""
    finished: bool = False
    """Condition Finished is True: the Workload gave its quota back for good."""
    node_labels: Mapping[str, str] = field(default_factory=dict)
    """Node labels of the admitted flavors (ResourceFlavor spec.nodeLabels), to add to the pods' nodeSelector."""
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Tolerations of the admitted flavors (ResourceFlavor spec.tolerations), to add to the pods."""


@dataclass(frozen=True)
class QueueingUnavailable:
    """The supervisor cannot queue jobs (no Kueue integration): a queued job must wait, not run."""

    why: str
    """Why, for the status: e.g. "the operator runs without its Kueue integration (--kueue off)"."""


def queue_of(job: FineTuneJob) -> str | None:
    """The LocalQueue the job is submitted to, if any (the queue label, else spec.scheduling.queueName)."""
    return suspension.queue_name(job)


def runnable(observation: WorkloadObservation | None) -> bool:
    """The gang may exist: the Workload is admitted and not being evicted."""
    return observation is not None and observation.admitted and observation.evicted is None


def unsuspend_on_admission(job: FineTuneJob, observation: WorkloadObservation | None) -> bool:
    """A queued job created suspended that Kueue now admits: its `spec.suspend` is to be set to false (what
    Kueue does to the jobs of its own integrations). A job suspended after it started stays suspended."""
    started = job.status is not None and job.status.start_time is not None
    return job.spec.suspend and not started and queue_of(job) is not None and runnable(observation)


def _queued_message(queue: str, observation: WorkloadObservation) -> str:
    why = observation.pending or "waiting for Kueue to admit the Workload"
    return f"queued in LocalQueue {queue} (Workload {observation.name}): {why}"


def _unavailable(
    job: FineTuneJob, workers: Sequence[WorkerObservation], queue: str, why: str, now: datetime
) -> tuple[FineTuneJobStatus, GangPlan]:
    """A queued job the supervisor cannot queue: Pending (Suspended once it had run), no pod."""
    prev = job.status or FineTuneJobStatus()
    message = (
        f"spec.scheduling.queueName names LocalQueue {queue}, but {why}: the job waits and never runs "
        f"unqueued. Install Kueue and let the operator use it (chart value kueue.enabled), or remove queueName"
    )
    status = set_condition(prev, ConditionType.ADMITTED, "False", Reason.QUEUE_UNAVAILABLE, message, now)
    phase: Phase = "Pending" if prev.attempt == 0 else "Suspended"
    if phase == "Suspended":
        status = set_condition(status, ConditionType.SUSPENDED, "True", Reason.QUEUE_UNAVAILABLE, message, now)
        status = clear_condition(status, ConditionType.RUNNING, Reason.QUEUE_UNAVAILABLE, message, now)
    return with_phase(status, phase, message), gang.remove_all(workers, prev.attempt)


def held_events(
    previous: FineTuneJobStatus | None, status: FineTuneJobStatus, events: Sequence[Event]
) -> tuple[Event, ...]:
    """The events of a held job's decision: one Warning when it starts waiting because it cannot be queued
    (Admitted=False raises no event of its own: waiting in a queue is normal, a queue that cannot be used
    is not), instead of the Normal one its Suspended condition may raise."""
    now = find_condition(status, ConditionType.ADMITTED)
    before = find_condition(previous or FineTuneJobStatus(), ConditionType.ADMITTED)
    others = tuple(e for e in events if e.reason != Reason.QUEUE_UNAVAILABLE)
    if now is None or now.reason != Reason.QUEUE_UNAVAILABLE or (before is not None and before.reason == now.reason):
        return others
    return (*others, Event("Warning", Reason.QUEUE_UNAVAILABLE, now.message))


def grandfathered(job: FineTuneJob, workers: Sequence[WorkerObservation]) -> bool:
    """A gang that was launched without a queue (by an operator without its Kueue integration, before this
    rule; no Admitted condition was ever written) and still exists: stopping it on an operator upgrade would
    throw away a running job's progress for a rule it never met. It runs on; every later launch is queued."""
    prev = job.status or FineTuneJobStatus()
    return prev.attempt >= 1 and not gang.all_gone(workers) and find_condition(prev, ConditionType.ADMITTED) is None


def hold(
    job: FineTuneJob,
    workers: Sequence[WorkerObservation],
    observation: WorkloadObservation | QueueingUnavailable | None,
    now: datetime,
) -> tuple[FineTuneJobStatus, GangPlan] | None:
    """The status and plan of a queued job whose gang may not run now; None when it may, or when the job
    is not queued or has no Workload (`observation` None: a supervisor without queues, `kubetune run`;
    `QueueingUnavailable`: an operator that cannot queue, where the job waits). Before its first start the
    job is Pending; after one (an eviction, an admission withdrawn) it is Suspended as `spec.suspend` leaves
    it, so that re-admission resumes from the last checkpoint through the same path as unsuspending.
    A gang that runs although its job was never admitted (`grandfathered`) runs on; its next launch waits."""
    queue = queue_of(job)
    if queue is not None and grandfathered(job, workers):
        return None
    if queue is not None and isinstance(observation, QueueingUnavailable):
        return _unavailable(job, workers, queue, observation.why, now)
    if queue is None or not isinstance(observation, WorkloadObservation) or runnable(observation):
        return None
    prev = job.status or FineTuneJobStatus()
    evicted = observation.evicted
    reason = Reason.EVICTED if evicted else Reason.QUEUED
    message = _queued_message(queue, observation)
    if evicted:
        message = f"evicted by Kueue ({evicted}): workers removed, checkpoints kept; waiting for LocalQueue {queue}"
    status = set_condition(prev, ConditionType.ADMITTED, "False", reason, message, now)
    phase: Phase = "Pending" if prev.attempt == 0 else "Suspended"
    if phase == "Suspended":
        status = set_condition(status, ConditionType.SUSPENDED, "True", reason, message, now)
        status = clear_condition(status, ConditionType.RUNNING, reason, message, now)
        status = clear_condition(status, ConditionType.RESTARTING, reason, message, now)
    return with_phase(status, phase, message), gang.remove_all(workers, prev.attempt)


def admitted(
    job: FineTuneJob,
    status: FineTuneJobStatus,
    observation: WorkloadObservation | QueueingUnavailable | None,
    now: datetime,
) -> FineTuneJobStatus:
    """`status` with Admitted=True once a queued job's Workload is admitted (unchanged otherwise)."""
    if queue_of(job) is None or not isinstance(observation, WorkloadObservation) or not runnable(observation):
        return status
    message = f"admitted by Kueue (Workload {observation.name}, LocalQueue {queue_of(job)})"
    return set_condition(status, ConditionType.ADMITTED, "True", Reason.WORKLOAD_ADMITTED, message, now)


def placed(job: FineTuneJob, observation: WorkloadObservation | None) -> FineTuneJob:
    """The job as its pods are built once admitted: the admitted flavors' node labels added to
    `spec.scheduling.nodeSelector` and their tolerations to `spec.scheduling.tolerations`."""
    if observation is None or not (observation.node_labels or observation.tolerations):
        return job
    scheduling = job.spec.scheduling.model_dump(by_alias=True, exclude_none=True) if job.spec.scheduling else {}
    scheduling["nodeSelector"] = {**scheduling.get("nodeSelector", {}), **observation.node_labels}
    known = scheduling.get("tolerations", [])
    scheduling["tolerations"] = known + [dict(t) for t in observation.tolerations if dict(t) not in known]
    spec = job.spec.model_dump(by_alias=True, exclude_none=True) | {"scheduling": scheduling}
    return job.model_copy(update={"spec": type(job.spec).model_validate(spec)})


def release_admission(observation: WorkloadObservation | None, workers: Sequence[WorkerObservation]) -> bool:
    """After an eviction, once no worker is left: give the quota back (clear status.admission, as Kueue's
    own integrations do), so that Kueue requeues the Workload."""
    return (
        observation is not None
        and observation.evicted is not None
        and observation.quota_reserved
        and gang.all_gone(workers)
    )


def finished_reason(phase: Phase, observation: WorkloadObservation | None) -> str | None:
    """The Finished reason ("Succeeded" or "Failed") once the job has ended and its Workload is not yet marked."""
    if observation is None or observation.finished or phase not in ("Succeeded", "Failed"):
        return None
    return phase
