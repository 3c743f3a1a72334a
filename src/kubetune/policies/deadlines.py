"""Time limits: the job's `activeDeadlineSeconds` and the startup and scheduling timeouts of workers.

A worker stuck on ErrImagePull or Unschedulable never exits, so no exit-code policy would ever fail the
job: without these limits it would wait forever while holding a queue slot. Time is always passed in
(`now`), so each limit is a pure comparison that tests can drive with fixed instants.

The startup limits count from the current attempt's own pods (their scheduling or creation), so a
relaunch starts them afresh. They exist to catch a spec that will never start (a wrong image, a node
selector nothing matches); they are not meant to end a job over a wait whose cause is known and
passing. So the limit depends on *why* a worker waits, and on why the attempt was launched (the
Restarting condition of the relaunch names the disruption that ended the previous attempt):

| observed                                                     | after                        | verdict    |
|--------------------------------------------------------------|------------------------------|------------|
| job started, not suspended                                   | activeDeadlineSeconds        | DeadlineExceeded |
| pending worker waiting on ErrImagePull, ImagePullBackOff, ... | retryPolicy.startupTimeoutSeconds  | ImagePullFailed |
| pending worker waiting on CreateContainerConfigError          | retryPolicy.startupTimeoutSeconds  | CreateContainerConfigError |
| pending worker waiting on ContainerCreating (volumes, pull)   | retryPolicy.startupTimeoutSeconds  | ContainerCreatingTimeout |
| ... ContainerCreating on a volume still attached elsewhere    | the longer of it and VOLUME_RELEASE_SECONDS (10 min) | VolumeStillAttached (waits as such) |
| pending worker unschedulable                                  | retryPolicy.schedulingTimeoutSeconds | Unschedulable |
| ... in a relaunch after NodeLost or Disrupted                 | the longer of it and CAPACITY_RETURN_SECONDS (30 min) | Unschedulable |
| ... in a relaunch after Preempted                             | the longer of it and PREEMPTION_WAIT_SECONDS (24 h) | Unschedulable; waits as Preempted |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kubetune.api.job import FineTuneJob, FineTuneJobSpec
from kubetune.api.operations import RetryPolicySpec
from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.retry import FailureKind, FailureVerdict
from kubetune.policies.status import Event, clear_condition, find_condition, with_phase

#: Waiting reasons that mean the image cannot be fetched (kubelet's names).
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
#: Waiting reasons that mean the container cannot be configured (a missing Secret or ConfigMap key).
CONFIG_ERROR_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
#: The waiting reason of a scheduled container the kubelet has not started yet: its volumes are being
#: attached and mounted, its image pulled. It never ends on its own when a volume cannot be attached (a
#: ReadWriteOnce claim attached to another node: Multi-Attach) or mounted, so it is under the same deadline.
CREATING_REASONS = frozenset({"ContainerCreating"})
#: Every waiting reason `retryPolicy.startupTimeoutSeconds` covers.
STARTUP_REASONS = IMAGE_PULL_REASONS | CONFIG_ERROR_REASONS | CREATING_REASONS

#: Seconds after which Kubernetes' attach-detach controller force-detaches a volume from a node that is not
#: Ready although its pod is gone (its maxWaitForUnmountDuration, 6 min, not configurable).
KUBERNETES_FORCE_DETACH_SECONDS = 360.0
#: Seconds a worker may wait for a volume still attached to another node (Multi-Attach), counted from its
#: scheduling: Kubernetes' force-detach (6 min, counted from the old pod's deletion, which came before this
#: pod existed) plus 4 min for the attach to the new node and the kubelet's next mount try (its retry
#: backoff grows to 2 min 2 s). A volume whose holder is a healthy node is never force-detached; such a
#: job fails at this bound instead of `startupTimeoutSeconds`, which costs 5 min more on that rare mistake
#: and saves a week-long job from a node loss.
VOLUME_RELEASE_SECONDS = KUBERNETES_FORCE_DETACH_SECONDS + 240.0
#: Seconds a relaunch after a node loss or an eviction may stay unschedulable (when longer than
#: `schedulingTimeoutSeconds`). The gang fit the cluster before, so what it lacks is the capacity that left
#: with the node or was drained: a cluster autoscaler replaces a node in minutes (a GPU node in 5 to 15);
#: 30 min covers that with margin. Longer, the capacity is likely not coming back.
CAPACITY_RETURN_SECONDS = 1800.0
#: Seconds a relaunch after a preemption may stay unschedulable (when longer than `schedulingTimeoutSeconds`):
#: the higher-priority workload holds the capacity for as long as it runs (a day-long training job, say), so
#: failing early would not bring it back sooner; but pending pods still count against a ResourceQuota's
#: requests, so a job preempted for good must not hold its team's quota for ever.
PREEMPTION_WAIT_SECONDS = 86400.0
#: Seconds after its scheduling from which a ContainerCreating worker's volume attach is worth looking
#: up (the operator reads the pod's Events then, see `attach_worth_looking_up`): a healthy attach takes seconds,
#: and the attach-detach controller reports a Multi-Attach on its first try.
ATTACH_LOOKUP_AFTER_SECONDS = 30.0

#: Restarting reasons whose relaunch is judged more patiently: the previous attempt ended from outside.
DISRUPTION_CAUSES = frozenset({Reason.PREEMPTED, Reason.NODE_LOST, Reason.DISRUPTED})


def deadline_start(status: FineTuneJobStatus) -> datetime | None:
    """Since when `activeDeadlineSeconds` counts: the job's start, or its last resumption (time spent
    suspended does not count, as for Kubernetes Jobs). None before the job starts."""
    if status.start_time is None:
        return None
    resumed = next(
        (
            c.last_transition_time
            for c in status.conditions
            if c.type == ConditionType.SUSPENDED and c.status == "False"
        ),
        None,
    )
    return max(status.start_time, resumed) if resumed is not None else status.start_time


def active_deadline_left(spec: FineTuneJobSpec, status: FineTuneJobStatus, now: datetime) -> float | None:
    """Seconds left before the active deadline (<= 0: exceeded); None when there is no deadline, the job
    has not started, or it is suspended."""
    start = deadline_start(status)
    if spec.active_deadline_seconds is None or start is None or status.phase == "Suspended":
        return None
    return spec.active_deadline_seconds - (now - start).total_seconds()


def relaunch_cause(status: FineTuneJobStatus | None) -> str | None:
    """The disruption that ended the previous attempt while the relaunch starts: the reason of a Restarting
    condition still True (it turns False once the new gang runs); None for a first attempt, a relaunch
    after the job's own failure, or a running gang."""
    restarting = find_condition(status, ConditionType.RESTARTING) if status is not None else None
    if restarting is None or restarting.status != "True" or restarting.reason not in DISRUPTION_CAUSES:
        return None
    return restarting.reason


@dataclass(frozen=True)
class Limits:
    """How long a pending worker may wait, in seconds; None: no limit (activeDeadlineSeconds still applies)."""

    startup: float
    """On its image, configuration or volumes (retryPolicy.startupTimeoutSeconds)."""
    volume: float
    """On a volume still attached to another node (Multi-Attach)."""
    scheduling: float | None
    """On the scheduler (retryPolicy.schedulingTimeoutSeconds, or longer after a disruption)."""


def limits(policy: RetryPolicySpec, cause: str | None = None) -> Limits:
    """The limits of a pending worker of an attempt launched after `cause` (see `relaunch_cause`)."""
    startup = float(policy.startup_timeout_seconds)
    scheduling = float(policy.scheduling_timeout_seconds)
    if cause in DISRUPTION_CAUSES:
        scheduling = max(scheduling, PREEMPTION_WAIT_SECONDS if cause == Reason.PREEMPTED else CAPACITY_RETURN_SECONDS)
    volume = max(startup, VOLUME_RELEASE_SECONDS)
    return Limits(startup=startup, volume=volume, scheduling=scheduling)


def _stuck_for(since: datetime | None, now: datetime) -> float:
    return (now - since).total_seconds() if since is not None else 0.0


def _held_elsewhere(worker: WorkerObservation) -> bool:
    return worker.waiting_reason in CREATING_REASONS and worker.volume_held_elsewhere is not None


def _creating_verdict(worker: WorkerObservation, waited: float, limit: Limits) -> FailureVerdict | None:
    name = f"worker {worker.index}"
    if _held_elsewhere(worker) and waited >= limit.volume:
        text = (
            f"{name} waited {waited:.0f}s for a volume still attached to another node ({worker.volume_held_elsewhere}), "
            f"past Kubernetes' force-detach ({KUBERNETES_FORCE_DETACH_SECONDS:.0f}s): Kubernetes detaches only from "
            "a node that is not Ready, so another live pod may hold it; if its node is gone for good, mark it "
            "(taint node.kubernetes.io/out-of-service=nodeshutdown:NoExecute) and apply the job again"
        )
        return FailureVerdict(FailureKind.PERMANENT, Reason.VOLUME_STILL_ATTACHED, text, worker.index)
    if not _held_elsewhere(worker) and waited >= limit.startup:
        detail = f": {worker.waiting_message}" if worker.waiting_message else ""
        text = (
            f"{name} was still ContainerCreating after {waited:.0f}s{detail}: a volume could not be attached or "
            "mounted (a ReadWriteOnce claim attached to another node: Multi-Attach; see the pod's events) or the "
            "image pull is slower than retryPolicy.startupTimeoutSeconds allows"
        )
        return FailureVerdict(FailureKind.PERMANENT, Reason.CONTAINER_CREATING_TIMEOUT, text, worker.index)
    return None


def startup_verdict(
    worker: WorkerObservation, policy: RetryPolicySpec, now: datetime, cause: str | None = None
) -> FailureVerdict | None:
    """A permanent failure when a pending worker has waited on its image, its configuration, its volumes
    (ContainerCreating) or the scheduler for longer than allowed (`limits`); None otherwise."""
    if worker.state != "pending":
        return None
    limit = limits(policy, cause)
    name = f"worker {worker.index}"
    waited = _stuck_for(worker.waiting_since, now)
    detail = f": {worker.waiting_message}" if worker.waiting_message else ""
    if worker.waiting_reason in IMAGE_PULL_REASONS and waited >= limit.startup:
        text = f"{name} could not pull its image for {waited:.0f}s ({worker.waiting_reason}){detail}"
        return FailureVerdict(FailureKind.PERMANENT, Reason.IMAGE_PULL_FAILED, text, worker.index)
    if worker.waiting_reason in CONFIG_ERROR_REASONS and waited >= limit.startup:
        text = f"{name} could not be configured for {waited:.0f}s ({worker.waiting_reason}){detail}"
        return FailureVerdict(FailureKind.PERMANENT, Reason.CONTAINER_CONFIG_ERROR, text, worker.index)
    if worker.waiting_reason in CREATING_REASONS and (creating := _creating_verdict(worker, waited, limit)):
        return creating
    unschedulable = _stuck_for(worker.unschedulable_since, now)
    if worker.unschedulable_since is not None and limit.scheduling is not None and unschedulable >= limit.scheduling:
        detail = f": {worker.unschedulable_message}" if worker.unschedulable_message else ""
        after = f" (after {cause}, up to {limit.scheduling:.0f}s)" if cause is not None else ""
        text = f"{name} was unschedulable for {unschedulable:.0f}s{after}{detail}"
        return FailureVerdict(FailureKind.PERMANENT, Reason.UNSCHEDULABLE, text, worker.index)
    return None


def startup_verdicts(job: FineTuneJob, current: Sequence[WorkerObservation], now: datetime) -> list[FailureVerdict]:
    """`startup_verdict` of each worker of the current attempt, judged by the job's relaunch cause."""
    cause = relaunch_cause(job.status)
    verdicts = (startup_verdict(w, job.spec.retry_policy, now, cause) for w in current)
    return [v for v in verdicts if v is not None]


def startup_check_in(
    worker: WorkerObservation, policy: RetryPolicySpec, now: datetime, cause: str | None = None
) -> float | None:
    """Seconds until `startup_verdict` could change for this worker (for a supervisor's next look), or until
    its volume attach is worth looking up (`ATTACH_LOOKUP_AFTER_SECONDS`)."""
    if worker.state != "pending":
        return None
    limit = limits(policy, cause)
    waited = _stuck_for(worker.waiting_since, now)
    waits: list[float] = []
    if worker.waiting_reason in STARTUP_REASONS:
        waits.append((limit.volume if _held_elsewhere(worker) else limit.startup) - waited)
    if worker.waiting_reason in CREATING_REASONS and waited < ATTACH_LOOKUP_AFTER_SECONDS:
        waits.append(ATTACH_LOOKUP_AFTER_SECONDS - waited)
    if worker.unschedulable_since is not None and limit.scheduling is not None:
        waits.append(limit.scheduling - _stuck_for(worker.unschedulable_since, now))
    return max(min(waits), 0.0) if waits else None


def check_in(job: FineTuneJob, current: Sequence[WorkerObservation], now: datetime) -> list[float | None]:
    """`startup_check_in` of each worker of the current attempt, judged by the job's relaunch cause."""
    cause = relaunch_cause(job.status)
    return [startup_check_in(w, job.spec.retry_policy, now, cause) for w in current]


def attach_worth_looking_up(waiting_reason: str | None, waited: float) -> bool:
    """Whether a supervisor should find out if a pending worker's volume is attached elsewhere: it has been
    ContainerCreating for `ATTACH_LOOKUP_AFTER_SECONDS` (a bounded number of reads: only stuck workers)."""
    return waiting_reason in CREATING_REASONS and waited >= ATTACH_LOOKUP_AFTER_SECONDS


def _names(workers: Sequence[WorkerObservation]) -> str:
    return ", ".join(str(w.index) for w in workers)


def _named_waits(current: Sequence[WorkerObservation], cause: str | None, limit: Limits) -> list[tuple[str, str]]:
    """(reason, sentence) for each known cause of the pending workers' wait, the most specific first."""
    pending = [w for w in current if w.state == "pending"]
    held = [w for w in pending if _held_elsewhere(w)]
    unschedulable = [w for w in pending if w.unschedulable_message]
    waits: list[tuple[str, str]] = []
    if held:
        waits.append(
            (
                Reason.VOLUME_STILL_ATTACHED,
                f"worker(s) {_names(held)} wait for a volume still attached to another node "
                f"({held[0].volume_held_elsewhere}); Kubernetes force-detaches it from a lost node after "
                f"{KUBERNETES_FORCE_DETACH_SECONDS:.0f}s, the job waits up to {limit.volume:.0f}s",
            )
        )
    if unschedulable and cause == Reason.PREEMPTED:
        waits.append(
            (
                Reason.PREEMPTED,
                f"worker(s) {_names(unschedulable)} wait for the capacity a higher-priority workload took: "
                f"{unschedulable[0].unschedulable_message} (after a preemption the relaunch waits up to "
                f"{limit.scheduling:.0f}s)",
            )
        )
    elif unschedulable:
        sentence = f"worker(s) {_names(unschedulable)} cannot be scheduled: {unschedulable[0].unschedulable_message}"
        waits.append((Reason.UNSCHEDULABLE, sentence))
    return waits


def waiting_status(
    job: FineTuneJob, status: FineTuneJobStatus, current: Sequence[WorkerObservation], now: datetime
) -> tuple[FineTuneJobStatus, tuple[Event, ...]]:
    """A gang waiting for a known reason says so: in the status message (the scheduler's words for an
    unschedulable worker, "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."), as the reason of a
    Running condition left False by the previous attempt (a volume still attached, a preemption), and in a
    Warning Event when the message first appears or changes. `status` is the one being written; the
    previous one is `job.status`."""
    cause = relaunch_cause(job.status)
    waits = _named_waits(current, cause, limits(job.spec.retry_policy, cause))
    if not waits:
        return status, ()
    reason = waits[0][0]
    message = "; ".join([status.message or "", *(sentence for _, sentence in waits)]).lstrip("; ")
    status = with_phase(status, status.phase, message)
    if reason != Reason.UNSCHEDULABLE:  # Unschedulable keeps WorkersPending on the condition, as it always has
        status = clear_condition(status, ConditionType.RUNNING, reason, message, now)
    changed = (job.status.message if job.status else None) != message
    return status, (Event("Warning", reason, message),) if changed else ()
