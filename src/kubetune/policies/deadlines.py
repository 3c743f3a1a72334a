"""Time limits: the job's `activeDeadlineSeconds` and the startup and scheduling timeouts of workers.

A worker stuck on ErrImagePull or Unschedulable never exits, so no exit-code policy would ever fail the
job: without these limits it would wait forever while holding a queue slot. Time is always passed in
(`now`), so each limit is a pure comparison that tests can drive with fixed instants.

| observed                                                     | after                        | verdict    |
|--------------------------------------------------------------|------------------------------|------------|
| job started, not suspended                                   | activeDeadlineSeconds        | DeadlineExceeded |
| pending worker waiting on ErrImagePull, ImagePullBackOff, ... | retryPolicy.startupTimeoutSeconds  | ImagePullFailed |
| pending worker waiting on CreateContainerConfigError          | retryPolicy.startupTimeoutSeconds  | CreateContainerConfigError |
| pending worker waiting on ContainerCreating (volumes, pull)   | retryPolicy.startupTimeoutSeconds  | ContainerCreatingTimeout |
| pending worker unschedulable                                  | retryPolicy.schedulingTimeoutSeconds | Unschedulable |
"""

from __future__ import annotations

from datetime import datetime

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.operations import RetryPolicySpec
from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.retry import FailureKind, FailureVerdict

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


def _stuck_for(since: datetime | None, now: datetime) -> float:
    return (now - since).total_seconds() if since is not None else 0.0


def startup_verdict(worker: WorkerObservation, policy: RetryPolicySpec, now: datetime) -> FailureVerdict | None:
    """A permanent failure when a pending worker has waited on its image, its configuration, its volumes
    (ContainerCreating) or the scheduler for longer than allowed; None otherwise."""
    if worker.state != "pending":
        return None
    name = f"worker {worker.index}"
    waited = _stuck_for(worker.waiting_since, now)
    detail = f": {worker.waiting_message}" if worker.waiting_message else ""
    if worker.waiting_reason in IMAGE_PULL_REASONS and waited >= policy.startup_timeout_seconds:
        text = f"{name} could not pull its image for {waited:.0f}s ({worker.waiting_reason}){detail}"
        return FailureVerdict(FailureKind.PERMANENT, Reason.IMAGE_PULL_FAILED, text, worker.index)
    if worker.waiting_reason in CONFIG_ERROR_REASONS and waited >= policy.startup_timeout_seconds:
        text = f"{name} could not be configured for {waited:.0f}s ({worker.waiting_reason}){detail}"
        return FailureVerdict(FailureKind.PERMANENT, Reason.CONTAINER_CONFIG_ERROR, text, worker.index)
    if worker.waiting_reason in CREATING_REASONS and waited >= policy.startup_timeout_seconds:
        text = (
            f"{name} was still ContainerCreating after {waited:.0f}s{detail}: a volume could not be attached or "
            "mounted (a ReadWriteOnce claim attached to another node: Multi-Attach; see the pod's events) or the "
            "image pull is slower than retryPolicy.startupTimeoutSeconds allows"
        )
        return FailureVerdict(FailureKind.PERMANENT, Reason.CONTAINER_CREATING_TIMEOUT, text, worker.index)
    unschedulable = _stuck_for(worker.unschedulable_since, now)
    if worker.unschedulable_since is not None and unschedulable >= policy.scheduling_timeout_seconds:
        detail = f": {worker.unschedulable_message}" if worker.unschedulable_message else ""
        text = f"{name} was unschedulable for {unschedulable:.0f}s{detail}"
        return FailureVerdict(FailureKind.PERMANENT, Reason.UNSCHEDULABLE, text, worker.index)
    return None


def startup_check_in(worker: WorkerObservation, policy: RetryPolicySpec, now: datetime) -> float | None:
    """Seconds until `startup_verdict` could change for this worker (for a supervisor's next look)."""
    waits: list[float] = []
    if worker.state == "pending" and worker.waiting_reason in STARTUP_REASONS:
        waits.append(policy.startup_timeout_seconds - _stuck_for(worker.waiting_since, now))
    if worker.state == "pending" and worker.unschedulable_since is not None:
        waits.append(policy.scheduling_timeout_seconds - _stuck_for(worker.unschedulable_since, now))
    return max(min(waits), 0.0) if waits else None
