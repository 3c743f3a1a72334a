"""One job's reconcile: gather what is, ask the policies what should be, apply the difference.

This is the level-triggered core. It reads what the watches hold (kubetune.operator.caches: the job
with the status written last time, the ConfigMap holding the launched spec, the job's pods) and keeps
no memory of its own beyond them, so an operator restarted at any moment picks up exactly where the
last one stopped. The status is written with the job's resourceVersion as a precondition: a reconcile
that read a stale copy is refused (409), reads the job again and starts over. Order matters too: the status (the policies' memory: attempt, restarts, when a backoff began) is written
*before* pods are created or deleted, so a crash between the two is repaired by the next reconcile
rather than duplicated. Creating is idempotent (names are deterministic per attempt and index, and
"already exists" is success), deleting too ("not found" is success).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from math import inf
from typing import Any

from pydantic import ValidationError

from kubetune.api.job import PLURAL, FineTuneJob
from kubetune.api.skew import unknown_fields_message, without_unknown_fields
from kubetune.api.status import FINISHED_PHASES, FineTuneJobStatus, Reason
from kubetune.operator import builders, metrics
from kubetune.operator.caches import Caches
from kubetune.operator.creation import GangCreator
from kubetune.operator.kube import KUEUE_GROUP, KUEUE_VERSION, ApiError, Kube
from kubetune.operator.nodes import OutageView
from kubetune.operator.observe import looks_up_attach, node_of, observe_pod, owned_by, suspects_node_loss
from kubetune.operator.owners import StaleObjectError, owner_uids
from kubetune.operator.progress import ProgressSource
from kubetune.operator.progress_poller import ProgressPoller
from kubetune.operator.rank_zero import RankZeroWatch
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.workloads import WorkloadSync
from kubetune.policies import namespaces, queueing, shared_folders, storage
from kubetune.policies.mass_node_loss import decide_with_outage
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.progress_cadence import progress_only
from kubetune.policies.progress_reach import with_reach
from kubetune.policies.reconcile import Decision, refuse_launch, refused
from kubetune.policies.spec_changes import effective_spec, refused_fields
from kubetune.policies.status import Event

logger = logging.getLogger(__name__)

#: Seconds before looking again while a deleted namesake's children are being removed.
STALE_RECHECK_SECONDS = 1.0

#: Seconds before telling rank 0 again that its result was received, when it did not acknowledge: it holds
#: its pod until told (or until its handover time, 120 s by default, runs out).
CONFIRM_RETRY_SECONDS = 1.0

#: Why a queued job waits when the operator runs without its Kueue integration.
NO_KUEUE = (
    f"the operator runs without its Kueue integration ({KUEUE_GROUP}/{KUEUE_VERSION} Workloads were not served "
    f"when it started, or --kueue off)"
)

#: Posts one Kubernetes event about the job: (job body, event).
EventPoster = Callable[[Mapping[str, Any], Event], None]


@dataclass(frozen=True)
class Outcome:
    """What one reconcile found, for the loop that runs it."""

    exists: bool
    check_again_in: float | None = None
    finished: bool = False
    polled: bool = False
    """Rank 0 of the running job is read by the progress poller, which asks for a reconcile when progress
    has something to say: nothing needs the job looked at on a short timer."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """Reconciles jobs with a Kube client, a progress source and a clock (all injectable)."""

    def __init__(
        self,
        kube: Kube,
        caches: Caches,
        settings: OperatorSettings,
        progress: ProgressSource,
        post_event: EventPoster,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.kube = kube
        self.caches = caches
        self.settings = settings
        self.progress = progress
        self.post_event = post_event
        self.clock = clock
        self.creator = GangCreator(kube, caches, settings.build_settings())
        self.poller = ProgressPoller(progress, settings.progress_cadence(), settings.progress_readers)
        self.rank_zero = RankZeroWatch(progress, self.poller)
        self.outage = OutageView(caches.nodes, caches.pods, settings.node_outage)
        """The brake on mass node loss's view of the Nodes (None until the Node cache has listed)."""
        self._skew_warned: dict[tuple[str, str], tuple[str | None, int | None, tuple[str, ...]] | None] = {}
        """Per job: the uid, generation and unknown fields last warned about (UnknownFieldsIgnored)."""
        self.workloads = WorkloadSync(kube, caches, settings.build_settings()) if settings.kueue else None
        self.no_queue = None if settings.kueue else queueing.QueueingUnavailable(NO_KUEUE)
        """What a queued job is told when this operator cannot queue it (None: it can)."""

    async def reconcile(self, namespace: str, name: str) -> Outcome:
        started = time.monotonic()
        try:
            return await self._reconcile(namespace, name)
        except ApiError as error:
            if error.status not in (404, 409) or error.details.get("details", {}).get("kind", PLURAL) != PLURAL:
                raise
            fresh = await self.kube.get_job(namespace, name)  # it read a stale job, or one deleted meanwhile
            self._reread(namespace, name, fresh)
            if fresh is None:  # gone: forgotten here, as no later event of the cache will queue it again
                self._forget(namespace, name)
            return Outcome(exists=fresh is not None, check_again_in=0.0)
        finally:
            metrics.observe_reconcile(time.monotonic() - started)

    async def _reconcile(self, namespace: str, name: str) -> Outcome:
        body = self.caches.jobs.get(namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            self._forget(namespace, name)
            return Outcome(exists=False)
        job = await self._effective_job(body)
        if job is None:
            return Outcome(exists=True, finished=True)
        uid = body.get("metadata", {}).get("uid")
        pods = self._pods(namespace, name, uid)
        workers = await self._observe(pods)
        previous = job.status or FineTuneJobStatus()
        now = self.clock()
        if (protected := namespaces.refused(job, workers, self.settings.protected_namespaces, now)) is not None:
            protected = await self._apply(body, job, pods, workers, protected)  # nothing asked of its pods
            return Outcome(exists=not protected.delete_job, check_again_in=protected.check_again_in, finished=True)
        rank_zero = await self.rank_zero.look((namespace, name), previous, pods, workers)
        workers = rank_zero.workers(workers, previous.attempt)  # worker 0 ended, once its whole result is in
        queued, workload = await self.workloads.look(job) if self.workloads else (None, None)
        if queueing.unsuspend_on_admission(job, queued):  # Kueue's convention: admission unsuspends
            body = await self.kube.unsuspend_job(namespace, name)  # (its new resourceVersion for the status write)
            self.caches.record(body)
            job = job.model_copy(update={"spec": job.spec.model_copy(update={"suspend": False})})
        outage = self.outage.outage(self.caches.synced("nodes"))
        queue = queued or self.no_queue
        decision = decide_with_outage(job, workers, now, outage, progress=rank_zero.snapshot, queue=queue)
        decision = with_reach(decision, previous, rank_zero.reach, now, self.settings.progress_unreachable_after)
        if decision.plan.create and decision.plan.attempt != (job.status or FineTuneJobStatus()).attempt:
            decision = await self._check_storage(job, workers, decision, now)
        decision = await self._apply(body, queueing.placed(job, queued), pods, workers, decision)
        if self.workloads:
            await self.workloads.follow(job, decision.status.phase, workers, queued, workload, now)
        check_again_in = decision.check_again_in
        if await self.rank_zero.confirm(rank_zero, decision.status):  # owed: soon, not at a finished job's pace
            check_again_in = min(check_again_in if check_again_in is not None else inf, CONFIRM_RETRY_SECONDS)
        finished = decision.status.phase in FINISHED_PHASES
        polled = decision.status.phase == "Running" and rank_zero.pod is not None
        return Outcome(not decision.delete_job, check_again_in, finished, polled)

    def _forget(self, namespace: str, name: str) -> None:
        metrics.forget_job(namespace, name)
        self.poller.untrack((namespace, name))
        self._skew_warned.pop((namespace, name), None)

    def _pods(self, namespace: str, name: str, uid: str | None) -> list[dict[str, Any]]:
        """The job's worker pods, from the cache."""
        return [pod for pod in self.caches.pods.indexed(namespace, name) if owned_by(pod, name, uid)]

    def _reread(self, namespace: str, name: str, fresh: dict[str, Any] | None) -> None:
        """After a refused status write: the job as the server has it now replaces the stale copy."""
        if fresh is not None:
            self.caches.jobs.upsert(fresh)
        elif (stale := self.caches.jobs.get(namespace, name)) is not None:
            self.caches.jobs.remove(stale)

    async def _observe(self, pods: list[dict[str, Any]]) -> list[WorkerObservation]:
        """The workers, with the Node of each pod that shows signs of a lost node (from the Node cache; read
        once per node where the operator may not list Nodes), and the attach failures of each pod stuck in
        ContainerCreating (Events are not cached: read only for such pods, see `looks_up_attach`)."""
        nodes: dict[str, dict[str, Any] | None] = {}
        events: dict[str, list[dict[str, Any]]] = {}
        cached = self.caches.synced("nodes")
        now = self.clock()
        for pod in pods:
            node = node_of(pod)
            if node is not None and node not in nodes and suspects_node_loss(pod):
                nodes[node] = self.caches.nodes.get("", node) if cached else await self.kube.get_node(node)
            if looks_up_attach(pod, now) and (uid := pod["metadata"].get("uid")):
                events[uid] = await self.kube.list_attach_failures(pod["metadata"]["namespace"], uid)
        return [
            observe_pod(pod, nodes.get(node_of(pod) or ""), events.get(pod["metadata"].get("uid"), [])) for pod in pods
        ]

    async def _check_storage(
        self, job: FineTuneJob, workers: list[WorkerObservation], launch: Decision, now: datetime
    ) -> Decision:
        """Before a new attempt launches: no other live job of the namespace keeps its folders (from the job
        cache; kubetune.policies.shared_folders decides), and its claims can hold the gang (read here;
        kubetune.policies.storage decides; a claim the operator may not read, 403, is not judged)."""
        body = self.caches.jobs.get(job.namespace, job.name) or {}
        mine = shared_folders.WrittenFolders.of(body)
        live = shared_folders.live_jobs(self.caches.jobs.indexed(job.namespace))
        if mine is not None and (taken := shared_folders.conflict(mine, live)) is not None:
            return refuse_launch(job, workers, *taken, now)
        observed: dict[str, storage.ClaimObservation | None] = {}
        for claim in storage.claims_of(job.spec):
            try:
                found = await self.kube.get_claim(job.namespace, claim)
            except ApiError as error:
                if error.status != 403:
                    raise
                logger.warning("cannot read PersistentVolumeClaim %s/%s: %s", job.namespace, claim, error)
                continue
            observed[claim] = storage.ClaimObservation.from_manifest(found) if found is not None else None
        return storage.apply_to_launch(job, workers, launch, storage.check_claims(job.spec, observed), now)

    async def _effective_job(self, body: dict[str, Any]) -> FineTuneJob | None:
        """The job as the policies must see it: the live object, with the spec it launched with (changes
        to frozen fields refused). None when the object is not a valid FineTuneJob."""
        meta = body.get("metadata", {})
        configmap = self.caches.configmaps.get(
            meta.get("namespace", "default"), builders.configmap_name(meta.get("name", ""))
        )
        if configmap is not None and meta.get("uid") not in owner_uids(configmap):
            configmap = None  # a deleted namesake's, not yet collected: this job has launched nothing yet
        launched_text = ((configmap or {}).get("data") or {}).get(builders.LAUNCHED_SPEC_KEY)
        launched = json.loads(launched_text) if launched_text else None
        live_spec = body.get("spec") or {}
        refused = refused_fields(launched, live_spec) if launched is not None else []
        job = await self._validated(body, {**body, "spec": effective_spec(launched, live_spec)})
        if job is None:
            return None
        if refused and (job.status or FineTuneJobStatus()).observed_generation != job.metadata.generation:
            fields = ", ".join(f"spec.{name}" for name in refused)
            message = f"changes to {fields} were ignored: a started job's spec is immutable except `suspend`"
            self.post_event(body, Event("Warning", Reason.SPEC_CHANGE_REFUSED, message))
        return job

    async def _validated(self, body: dict[str, Any], document: dict[str, Any]) -> FineTuneJob | None:
        """The job in `document`; fields of a newer CRD that the models do not know are ignored with a Warning
        Event (once per generation), anything else invalid fails the job."""
        try:
            return FineTuneJob.model_validate(document)
        except ValidationError as error:
            skewed = without_unknown_fields(document, error)
            if skewed is None:
                await self._reject(body, error)
                return None
            cleaned, paths = skewed
        job = await self._validated(body, cleaned)
        said = (job.metadata.uid, job.metadata.generation, tuple(paths)) if job is not None else None
        if job is not None and self._skew_warned.get((job.namespace, job.name)) != said:
            # Once per generation and set of fields, remembered here rather than read from observedGeneration:
            # a watch opened before the CRD was upgraded delivers the job pruned to the old schema, and the
            # status may be written from that copy before the fields are seen.
            self._skew_warned[(job.namespace, job.name)] = said
            self.post_event(body, Event("Warning", Reason.UNKNOWN_FIELDS, unknown_fields_message(paths)))
        return job

    async def _reject(self, body: dict[str, Any], error: ValidationError) -> None:
        """An object the CRD schema would have refused (stored without the CRD's validation, or before a rule
        of this version existed): it fails, and a gang an older operator started for it is removed, never
        left running behind a failed job."""
        meta = body.get("metadata", {})
        status = body.get("status") or {}
        for pod in self._pods(meta.get("namespace", "default"), meta.get("name", ""), meta.get("uid")):
            if not pod.get("metadata", {}).get("deletionTimestamp"):
                self.caches.record(
                    await self.kube.delete_pod(
                        pod["metadata"]["namespace"], pod["metadata"]["name"], pod["metadata"].get("uid")
                    )
                )
        if status.get("phase") == "Failed":
            return
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = f"invalid FineTuneJob: {where}: {first['msg']}"
        written = await self.kube.patch_job_status(
            meta["namespace"], meta["name"], {"phase": "Failed", "message": message}
        )
        self.caches.record(written)
        self.post_event(body, Event("Warning", Reason.INVALID_SPEC, message))

    async def _apply(
        self,
        body: dict[str, Any],
        job: FineTuneJob,
        pods: list[dict[str, Any]],
        workers: list[WorkerObservation],
        decision: Decision,
    ) -> Decision:
        """Write the status, post the events, then act on the plan. A refused create is decided on by the
        policies (`refused`) and that second decision applied in turn; returns the decision that holds."""
        namespace, name = job.namespace, job.name
        previous = job.status or FineTuneJobStatus()
        if decision.status != previous:
            version = body.get("metadata", {}).get("resourceVersion")
            plan = decision.plan
            quiet = not (plan.create or plan.delete or plan.force_delete or decision.events or decision.delete_job)
            low = quiet and progress_only(previous, decision.status)
            body = await self.kube.patch_job_status(namespace, name, decision.status.to_wire(), version, low)
            self.caches.record(body)  # (and its new resourceVersion for a second write in this reconcile)
        self._record(namespace, name, previous, decision)
        for event in decision.events:
            self.post_event(body, event)
        if decision.plan.create:
            await self._confirm_job(namespace, name, body)
            try:
                refusal = await self.creator.create(job, body, decision.plan.attempt, decision.plan.create)
            except StaleObjectError as stale:
                self.post_event(body, Event("Normal", Reason.STALE_CHILDREN, str(stale)))
                return replace(decision, check_again_in=STALE_RECHECK_SECONDS)
            if refusal is not None:  # decided on the pods as they are now (some of the gang may exist)
                pods = self._pods(namespace, name, body.get("metadata", {}).get("uid"))
                workers = await self._observe(pods)
                written = job.model_copy(update={"status": decision.status})
                return await self._apply(body, written, pods, workers, refused(written, workers, refusal, self.clock()))
        by_ref = {
            (
                int(p["metadata"]["labels"][builders.ATTEMPT_LABEL]),
                int(p["metadata"]["labels"][builders.INDEX_LABEL]),
            ): p
            for p in pods
        }
        for ref in decision.plan.force_delete:
            if (victim := by_ref.get((ref.attempt, ref.index))) is not None:
                logger.info("force-deleting %s: its node %s is lost", victim["metadata"]["name"], node_of(victim))
                self.caches.record(
                    await self.kube.delete_pod_now(namespace, victim["metadata"]["name"], victim["metadata"].get("uid"))
                )
        forced = set(decision.plan.force_delete)
        for ref in decision.plan.delete:
            victim = by_ref.get((ref.attempt, ref.index))
            if victim is not None and ref not in forced:
                self.caches.record(
                    await self.kube.delete_pod(namespace, victim["metadata"]["name"], victim["metadata"].get("uid"))
                )
        if decision.delete_job:
            logger.info("deleting %s/%s: ttlSecondsAfterFinished has passed", namespace, name)
            await self.kube.delete_job(namespace, name)
        return decision

    async def _confirm_job(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Before creating children, the job as the API server has it (one GET per launch): the job cache can
        lag the pod cache (its watch resumed later, after a partition or a restart), and children made for a
        job deleted meanwhile would only be collected again (seen on the real control plane: the operator
        re-created a deleted job's Service, NetworkPolicy, ConfigMap and pod every 100 ms). ApiError 404 when
        it is gone or is another job of that name: `reconcile` then forgets the stale copy."""
        fresh = await self.kube.get_job(namespace, name)
        uid = body.get("metadata", {}).get("uid")
        if fresh is None or fresh.get("metadata", {}).get("uid") != uid:
            self._reread(namespace, name, fresh)
            raise ApiError(
                404, f"FineTuneJob {namespace}/{name} (uid {uid}) no longer exists", {"details": {"kind": PLURAL}}
            )

    @staticmethod
    def _record(namespace: str, name: str, previous: FineTuneJobStatus, decision: Decision) -> None:
        phase = decision.status.phase
        metrics.record_phase(namespace, name, phase)
        if decision.counted_restart:
            metrics.record_restart(namespace)
        if phase in FINISHED_PHASES and previous.phase not in FINISHED_PHASES:
            metrics.record_finished(phase)
