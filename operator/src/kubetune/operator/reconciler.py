"""One job's reconcile: gather what is, ask the policies what should be, apply the difference.

This is the level-triggered core. It reads everything fresh from the API server (the job with the
status written last time, the ConfigMap holding the launched spec, the job's pods) and never trusts
memory, so an operator restarted at any moment picks up exactly where the last one stopped. Order
matters for that: the status (the policies' memory: attempt, restarts, when a backoff began) is written
*before* pods are created or deleted, so a crash between the two is repaired by the next reconcile
rather than duplicated. Creating is idempotent (names are deterministic per attempt and index, and
"already exists" is success), deleting too ("not found" is success).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubetune.api.job import FineTuneJob
from kubetune.api.status import FINISHED_PHASES, FineTuneJobStatus, Reason
from kubetune.operator import builders, metrics
from kubetune.operator.kube import Kube
from kubetune.operator.observe import observe_pod, owned_by
from kubetune.operator.progress import ProgressSource
from kubetune.operator.settings import OperatorSettings
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import Decision, decide
from kubetune.policies.spec_changes import effective_spec, refused_fields
from kubetune.policies.status import Event

logger = logging.getLogger(__name__)

#: Posts one Kubernetes event about the job: (job body, event).
EventPoster = Callable[[Mapping[str, Any], Event], None]


@dataclass(frozen=True)
class Outcome:
    """What one reconcile found, for the loop that runs it."""

    exists: bool
    check_again_in: float | None = None
    finished: bool = False


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """Reconciles jobs with a Kube client, a progress source and a clock (all injectable)."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        progress: ProgressSource,
        post_event: EventPoster,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.progress = progress
        self.post_event = post_event
        self.clock = clock

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        started = time.monotonic()
        try:
            return await self._reconcile(namespace, name)
        finally:
            metrics.observe_reconcile(time.monotonic() - started)

    async def _reconcile(self, namespace: str, name: str) -> Outcome:
        body = await self.kube.get_job(namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            metrics.forget_job(namespace, name)
            return Outcome(exists=False)
        job = await self._effective_job(body)
        if job is None:
            return Outcome(exists=True, finished=True)
        pods = [pod for pod in await self.kube.list_pods(namespace, name) if owned_by(pod, name)]
        workers = [observe_pod(pod) for pod in pods]
        progress = await self._progress(job, pods, workers)
        decision = decide(job, workers, self.clock(), progress)
        await self._apply(body, job, pods, decision)
        finished = decision.status.phase in FINISHED_PHASES
        return Outcome(exists=not decision.delete_job, check_again_in=decision.check_again_in, finished=finished)

    async def _effective_job(self, body: dict[str, Any]) -> FineTuneJob | None:
        """The job as the policies must see it: the live object, with the spec it launched with (changes
        to frozen fields refused). None when the object is not a valid FineTuneJob."""
        meta = body.get("metadata", {})
        configmap = await self.kube.get_configmap(
            meta.get("namespace", "default"), builders.configmap_name(meta.get("name", ""))
        )
        launched_text = ((configmap or {}).get("data") or {}).get(builders.LAUNCHED_SPEC_KEY)
        launched = json.loads(launched_text) if launched_text else None
        live_spec = body.get("spec") or {}
        refused = refused_fields(launched, live_spec) if launched is not None else []
        try:
            job = FineTuneJob.model_validate({**body, "spec": effective_spec(launched, live_spec)})
        except ValidationError as error:
            await self._reject(body, error)
            return None
        if refused and (job.status or FineTuneJobStatus()).observed_generation != job.metadata.generation:
            fields = ", ".join(f"spec.{name}" for name in refused)
            message = f"changes to {fields} were ignored: a started job's spec is immutable except `suspend`"
            self.post_event(body, Event("Warning", Reason.SPEC_CHANGE_REFUSED, message))
        return job

    async def _reject(self, body: dict[str, Any], error: ValidationError) -> None:
        """An object the CRD schema would have refused (only possible without the CRD's validation)."""
        meta = body.get("metadata", {})
        status = body.get("status") or {}
        if status.get("phase") == "Failed":
            return
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = f"invalid FineTuneJob: {where}: {first['msg']}"
        await self.kube.patch_job_status(meta["namespace"], meta["name"], {"phase": "Failed", "message": message})
        self.post_event(body, Event("Warning", Reason.INVALID_SPEC, message))

    async def _progress(self, job: FineTuneJob, pods: list[dict[str, Any]], workers: list[WorkerObservation]) -> Any:
        status = job.status or FineTuneJobStatus()
        if status.phase != "Running":
            return None
        for pod, worker in zip(pods, workers, strict=True):
            if worker.attempt == status.attempt and worker.index == 0 and worker.state == "running":
                return await self.progress(pod)
        return None

    async def _apply(
        self, body: dict[str, Any], job: FineTuneJob, pods: list[dict[str, Any]], decision: Decision
    ) -> None:
        namespace, name = job.namespace, job.name
        previous = job.status or FineTuneJobStatus()
        if decision.status != previous:
            await self.kube.patch_job_status(namespace, name, decision.status.to_wire())
        self._record(namespace, name, previous, decision)
        for event in decision.events:
            self.post_event(body, event)
        if decision.plan.create:
            await self._ensure_shared_children(job, body)
            for index in decision.plan.create:
                pod = builders.build_worker_pod(job, decision.plan.attempt, index, self.settings.build_settings())
                await self.kube.create_pod(pod)
        by_ref = {
            (
                int(p["metadata"]["labels"][builders.ATTEMPT_LABEL]),
                int(p["metadata"]["labels"][builders.INDEX_LABEL]),
            ): p
            for p in pods
        }
        for ref in decision.plan.delete:
            victim = by_ref.get((ref.attempt, ref.index))
            if victim is not None:
                await self.kube.delete_pod(namespace, victim["metadata"]["name"])
        if decision.delete_job:
            logger.info("deleting %s/%s: ttlSecondsAfterFinished has passed", namespace, name)
            await self.kube.delete_job(namespace, name)

    async def _ensure_shared_children(self, job: FineTuneJob, body: dict[str, Any]) -> None:
        """The headless Service and the ConfigMap, created once per job (before its first pods)."""
        await self.kube.create_service(builders.build_service(job))
        await self.kube.create_configmap(builders.build_configmap(job, body.get("spec") or {}))

    @staticmethod
    def _record(namespace: str, name: str, previous: FineTuneJobStatus, decision: Decision) -> None:
        phase = decision.status.phase
        metrics.record_phase(namespace, name, phase)
        if decision.counted_restart:
            metrics.record_restart(namespace)
        if phase in FINISHED_PHASES and previous.phase not in FINISHED_PHASES:
            metrics.record_finished(phase)
