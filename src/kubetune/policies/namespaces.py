"""Namespaces where the operator runs nothing, whatever its RBAC allows: the cluster's own and its own.

A ClusterRole that lets the operator create pods everywhere (the chart's default, `watch.allNamespaces`)
would let a FineTuneJob in `kube-system` run an author's image beside the control plane's components, or
one in the operator's namespace beside the operator and its ServiceAccount. So the supervisor refuses any
job there: it fails once (reason ProtectedNamespace, naming the namespaces), its gang, if an older operator
started one, is removed, and nothing is created. A finished job is left as it is (its TTL still applies).
The operator reads no pod of such a job over HTTP either: it decides before asking rank 0 anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kubetune.api.job import FineTuneJob
from kubetune.api.status import FINISHED_PHASES, Reason
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import Decision, decide, refuse_launch


def refusal_message(namespace: str, protected: Sequence[str]) -> str:
    return (
        f"namespace {namespace} is protected: the operator runs no job in {', '.join(protected)}; "
        f"create the job in a team's namespace"
    )


def refused(
    job: FineTuneJob, workers: Sequence[WorkerObservation], protected: Sequence[str], now: datetime
) -> Decision | None:
    """The decision for a job in a protected namespace (None: the namespace is not protected)."""
    if job.namespace not in protected:
        return None
    finished = decide(job, workers, now)
    if finished.status.phase in FINISHED_PHASES and (job.status is None or job.status.phase in FINISHED_PHASES):
        return finished  # failed already (or finished before): only its leftovers and TTL
    return refuse_launch(job, workers, Reason.PROTECTED_NAMESPACE, refusal_message(job.namespace, protected), now)
