"""Node loss: a worker whose machine stopped reporting is gone, even though the API still lists it.

When a node dies, nothing confirms its pods' end: they stay Running, then (once something deletes them)
Terminating, until their Node object is removed, which may be never. A gang restart that waits for the
old gang to be gone would wait for ever. So, once a worker's node has been silent for
`retryPolicy.nodeLostGraceSeconds`, the attempt is over (a disruption: not the job's fault, not counted
against maxRestarts) and its workers on that node are force-deleted, the one case where the supervisor
may not wait for a process to confirm its end. The grace keeps a node that only blinks (a kubelet
restart, a short partition) from costing a restart: within it the worker may still be alive. A failure
of a peer within the grace (its collective timed out on the lost worker) ends the attempt at once, and is
attributed to the node loss too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kubetune.api.job import FineTuneJob
from kubetune.api.status import Reason
from kubetune.policies.gang import GangPlan, WorkerRef
from kubetune.policies.observed import WorkerObservation, of_attempt
from kubetune.policies.retry import CONSEQUENTIAL_REASONS, FailureKind, FailureVerdict

#: Seconds a peer's "lost my peer" failure waits to be explained while that peer is still reported running:
#: longer than the node-lifecycle controller takes to mark a silent node NotReady (its node-monitor grace
#: period, 40-50 s by default), so a lost node is known before the failure is counted against maxRestarts.
PEER_ATTRIBUTION_SECONDS = 60.0


def _silent_for(worker: WorkerObservation, now: datetime) -> float:
    return (now - worker.node_lost_since).total_seconds() if worker.node_lost_since is not None else 0.0


def _lost(worker: WorkerObservation, grace: float, now: datetime) -> bool:
    return worker.node_lost_since is not None and not worker.terminated and _silent_for(worker, now) >= grace


def verdict(
    job: FineTuneJob, workers: Sequence[WorkerObservation], attempt: int, now: datetime
) -> FailureVerdict | None:
    """The attempt's end by node loss: a worker's node silent for the grace, or silent while a peer failed."""
    grace = job.spec.retry_policy.node_lost_grace_seconds
    current = of_attempt(workers, attempt)
    silent = [w for w in current if w.node_lost_since is not None and not w.terminated]
    if not silent:
        return None
    peer_failed = any(w.state == "failed" and w.node_lost_since is None for w in current)
    if not peer_failed and not any(_lost(w, grace, now) for w in silent):
        return None
    nodes = ", ".join(sorted({w.node or "?" for w in silent}))
    indexes = ", ".join(str(w.index) for w in silent)
    seconds = max(_silent_for(w, now) for w in silent)
    message = (
        f"node {nodes} stopped reporting {seconds:.0f}s ago (retryPolicy.nodeLostGraceSeconds: {grace}); "
        f"worker(s) {indexes} of attempt {attempt} were lost with it"
    )
    return FailureVerdict(FailureKind.DISRUPTION, Reason.NODE_LOST, message, silent[0].index)


def check_in(job: FineTuneJob, workers: Sequence[WorkerObservation], now: datetime) -> float | None:
    """Seconds until the grace of the next silent worker's node passes (None: none is silent, or every
    grace has passed already and the decision acted on it)."""
    grace = job.spec.retry_policy.node_lost_grace_seconds
    silent = [w for w in workers if w.node_lost_since is not None and not w.terminated]
    waits = [left for w in silent if (left := grace - _silent_for(w, now)) > 0]
    return min(waits) if waits else None


def with_force_deletions(
    plan: GangPlan, job: FineTuneJob, workers: Sequence[WorkerObservation], now: datetime
) -> GangPlan:
    """`plan` with the workers to remove whose node is lost (past the grace) marked for force deletion:
    those the plan deletes and those already being deleted, which no node will ever confirm."""
    grace = job.spec.retry_policy.node_lost_grace_seconds
    removing = set(plan.delete)
    force = tuple(
        WorkerRef(w.attempt, w.index)
        for w in sorted(workers, key=lambda w: (w.attempt, w.index))
        if _lost(w, grace, now) and (w.deleting or WorkerRef(w.attempt, w.index) in removing)
    )
    return GangPlan(attempt=plan.attempt, create=plan.create, delete=plan.delete, force_delete=force)


def awaits_attribution(
    cause: FailureVerdict, workers: Sequence[WorkerObservation], attempt: int, now: datetime
) -> bool:
    """Whether the attempt's failure is only a consequence (a worker lost its peer) whose cause is not known
    yet: another worker is still reported running, and the failure is recent. A dead node reports nothing,
    so its worker looks alive until the node is marked NotReady; deciding then would count the node's loss
    against maxRestarts."""
    if cause.reason not in CONSEQUENTIAL_REASONS:
        return False
    current = of_attempt(workers, attempt)
    failed = [w for w in current if w.state == "failed"]
    # A failure with no end time yet is one being handed over by a process still alive (handover.py): recent.
    recent = any(
        w.finished_at is None or (now - w.finished_at).total_seconds() < PEER_ATTRIBUTION_SECONDS for w in failed
    )
    unexplained = any(w.state == "running" and w.node_lost_since is None and not w.deleting for w in current)
    return recent and unexplained
