"""Kueue Workloads for queued FineTuneJobs: kubetune as a Kueue external framework.

A job with `spec.scheduling.queueName` owns one Workload (`kueue.x-k8s.io/v1beta2`, the version Kueue
v0.17 stores) with one pod set: `workers` copies of the worker pod, its resources, the job's priority
class and the queue. Kueue admits the Workload when the whole gang fits the ClusterQueue's quota, and
evicts it to preempt it; the policy (kubetune.policies.queueing) decides from what is read here, and
this module writes back what Kueue expects of a framework's controller, the way Kueue's own
integrations do:

- after an eviction, once the gang is gone: the quota given back (status.admission cleared,
  QuotaReserved=False, Requeued True for a preemption), so that Kueue queues the Workload again;
- when the job has ended: condition Finished, so that the quota is released for good.

The Workload is a child of the job (ownerReference, blockOwnerDeletion): deleting a queued job leaves
no Workload behind. Kueue must list the framework in `integrations.externalFrameworks` (README.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubetune.api.job import FineTuneJob
from kubetune.api.status import Phase
from kubetune.operator import builders
from kubetune.operator.caches import Caches
from kubetune.operator.kube import ApiError, Kube
from kubetune.policies import queueing
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.queueing import POD_SET, WorkloadObservation

#: How Kueue's configuration names this framework (`integrations.externalFrameworks`).
EXTERNAL_FRAMEWORK = "FineTuneJob.v1alpha1.kubetune.io"
#: Evictions after which Kueue's own integrations set Requeued=True (the others wait for the cause to go).
REQUEUED_EVICTIONS = frozenset({"Preempted", "NodeFailures"})


def workload_name(job: FineTuneJob) -> str:
    """Deterministic per job object (a namesake created after a deletion gets another Workload)."""
    digest = hashlib.sha256((job.metadata.uid or job.name).encode()).hexdigest()[:6]
    return f"finetunejob-{job.name[:240]}-{digest}"


def build_workload(job: FineTuneJob, settings: builders.BuildSettings, priority: int | None) -> dict[str, Any]:
    """The job's Workload: one pod set of `spec.distributed.workers` worker pods (the first attempt's
    worker 0 as the template: every worker asks for the same resources), its queue and priority.
    `priority` is the value of `spec.scheduling.priorityClassName` (None: no class, or not found)."""
    pod = builders.build_worker_pod(job, 1, 0, settings)
    template = {"metadata": {"labels": builders.job_labels(job)}, "spec": pod["spec"]}
    spec: dict[str, Any] = {
        "queueName": queueing.queue_of(job),
        "podSets": [{"name": POD_SET, "count": job.spec.distributed.workers, "template": template}],
    }
    priority_class = job.spec.scheduling.priority_class_name if job.spec.scheduling else None
    if priority_class and priority is not None:
        spec["priorityClassRef"] = {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": priority_class}
        spec["priority"] = priority
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": workload_name(job),
            "namespace": job.namespace,
            "labels": builders.job_labels(job),
            "ownerReferences": [builders.owner_reference(job)],
        },
        "spec": spec,
    }


def _conditions(workload: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type", ""): c for c in (workload.get("status") or {}).get("conditions") or []}


def _is_true(conditions: Mapping[str, Mapping[str, Any]], type_: str) -> bool:
    return conditions.get(type_, {}).get("status") == "True"


def assigned_flavors(workload: Mapping[str, Any]) -> list[str]:
    """The ResourceFlavors the admission assigned to the pod set (one per resource; duplicates removed)."""
    admission = (workload.get("status") or {}).get("admission") or {}
    names: list[str] = []
    for assignment in admission.get("podSetAssignments") or []:
        for flavor in (assignment.get("flavors") or {}).values():
            if flavor not in names:
                names.append(flavor)
    return names


def observe_workload(workload: Mapping[str, Any], flavors: Sequence[Mapping[str, Any]]) -> WorkloadObservation:
    """What the policy needs from the Workload and its admitted `flavors` (ResourceFlavor objects): the
    flavors' node labels and tolerations, and those of admission checks' pod-set updates."""
    conditions = _conditions(workload)
    status = workload.get("status") or {}
    evicted = conditions.get("Evicted", {}) if _is_true(conditions, "Evicted") else None
    reserved = conditions.get("QuotaReserved", {})
    pending = reserved.get("message") if reserved.get("status") == "False" else None
    labels: dict[str, str] = {}
    tolerations: list[Mapping[str, Any]] = []
    updates = [u for c in status.get("admissionChecks") or [] for u in c.get("podSetUpdates") or []]
    for source in [f.get("spec") or {} for f in flavors] + [u for u in updates if u.get("name") == POD_SET]:
        labels |= source.get("nodeLabels") or source.get("nodeSelector") or {}
        tolerations += [t for t in source.get("tolerations") or [] if t not in tolerations]
    return WorkloadObservation(
        name=workload.get("metadata", {}).get("name", ""),
        admitted=_is_true(conditions, "Admitted"),
        quota_reserved=status.get("admission") is not None,
        evicted=f"{evicted.get('reason', '')}: {evicted.get('message', '')}" if evicted is not None else None,
        pending=pending or None,
        finished=_is_true(conditions, "Finished"),
        node_labels=labels,
        tolerations=tuple(tolerations),
    )


def _condition(type_: str, status: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": type_, "status": status, "reason": reason, "message": message[:32768], "lastTransitionTime": stamp}


def _with_conditions(workload: Mapping[str, Any], *changes: dict[str, Any]) -> list[dict[str, Any]]:
    """The Workload's conditions with `changes` set (lastTransitionTime kept where the status is unchanged)."""
    conditions = [dict(c) for c in (workload.get("status") or {}).get("conditions") or []]
    for change in changes:
        old = next((c for c in conditions if c.get("type") == change["type"]), None)
        if old is None:
            conditions.append(change)
            continue
        if old.get("status") == change["status"]:
            change = change | {"lastTransitionTime": old.get("lastTransitionTime", change["lastTransitionTime"])}
        old.clear()
        old.update(change)
    return conditions


def release_patch(workload: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status patch that gives an evicted Workload's quota back, as Kueue's integrations do."""
    evicted = _conditions(workload).get("Evicted", {})
    reason, message = evicted.get("reason", "Evicted"), evicted.get("message", "evicted")
    requeued = "True" if reason in REQUEUED_EVICTIONS else "False"
    conditions = _with_conditions(
        workload,
        _condition("Requeued", requeued, reason, message, now),
        _condition("QuotaReserved", "False", "Pending", message, now),
        _condition("Admitted", "False", "NoReservation", "The workload has no reservation", now),
    )
    version = workload.get("metadata", {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": version}, "status": {"conditions": conditions, "admission": None}}


def finish_patch(workload: Mapping[str, Any], reason: str, now: datetime) -> dict[str, Any]:
    """The status patch that marks the Workload Finished (reason Succeeded or Failed)."""
    message = "FineTuneJob finished successfully" if reason == "Succeeded" else "FineTuneJob failed"
    conditions = _with_conditions(workload, _condition("Finished", "True", reason, message, now))
    return {
        "metadata": {"resourceVersion": workload.get("metadata", {}).get("resourceVersion")},
        "status": {"conditions": conditions},
    }


class WorkloadSync:
    """Reads (creating it first) and follows up the Workload of one queued job per reconcile."""

    def __init__(self, kube: Kube, caches: Caches, settings: builders.BuildSettings) -> None:
        self.kube = kube
        self.caches = caches
        self.settings = settings

    async def look(self, job: FineTuneJob) -> tuple[WorkloadObservation | None, dict[str, Any] | None]:
        """The job's Workload, created when missing; (None, None) for a job that is not queued."""
        if queueing.queue_of(job) is None:
            return None, None
        name = workload_name(job)
        workload = self.caches.workloads.get(job.namespace, name)
        if workload is None:
            if job.status is not None and job.status.phase in ("Succeeded", "Failed"):
                return None, None
            priority_class = job.spec.scheduling.priority_class_name if job.spec.scheduling else None
            priority = await self.kube.get_priority(priority_class) if priority_class else None
            workload = await self.kube.create_workload(build_workload(job, self.settings, priority))
            self.caches.record(workload)
        flavors = [f for name in assigned_flavors(workload) if (f := await self._flavor(name))]
        return observe_workload(workload, flavors), workload

    async def follow(
        self,
        job: FineTuneJob,
        phase: Phase,
        workers: Sequence[WorkerObservation],
        observation: WorkloadObservation | None,
        workload: dict[str, Any] | None,
        now: datetime,
    ) -> None:
        """Give an evicted Workload's quota back once its gang is gone; mark it Finished once the job ended."""
        if workload is None:
            return
        if queueing.release_admission(observation, workers):
            patch = release_patch(workload, now)
        elif (reason := queueing.finished_reason(phase, observation)) is not None:
            patch = finish_patch(workload, reason, now)
        else:
            return
        try:
            self.caches.record(await self.kube.patch_workload_status(job.namespace, workload_name(job), patch))
        except ApiError as error:
            if error.status != 409:
                raise
            # The cached Workload was stale (its watch lags): read it now; the next reconcile decides again.
            self.caches.record(await self.kube.get_workload(job.namespace, workload_name(job)))

    async def _flavor(self, name: str) -> dict[str, Any] | None:
        """An admitted ResourceFlavor, from the cache; read once from the API when the cache has not seen it
        yet (a worker pod must never be created without its flavor's node labels and tolerations)."""
        flavor = self.caches.flavors.get("", name)
        if flavor is None and (flavor := await self.kube.get_resource_flavor(name)) is not None:
            self.caches.flavors.upsert(flavor)
        return flavor
