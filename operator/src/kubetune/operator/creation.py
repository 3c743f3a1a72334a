"""Creating a gang: all of it or none of it, every refusal classified, stale namesakes cleared first.

The reconciler asks for workers to be created; this module does it the way a real cluster needs:

1. the whole gang is checked against the namespace's ResourceQuotas first (quota.py), so a gang that
   cannot fit is not created in part;
2. the job's Service, the attempt's NetworkPolicy (network_policy.py, when the operator makes them) and the
   job's ConfigMap (unless the cache holds them already), then its pods, are created
   as children of this very job (its uid), and each answer goes into the cache:
   an object of the same name left by a deleted job of the same name is deleted and the create retried
   on a later reconcile (kube.StaleObjectError), never adopted; one no FineTuneJob controls is never
   deleted: the job fails, naming it (NameTaken, kubetune.operator.owners);
3. a create the server refuses is classified (refusals.py) and returned, for the policies to decide
   (`kubetune.policies.reconcile.refused`); the job's status says "created" only once every worker
   exists.
"""

from __future__ import annotations

import secrets
from typing import Any

from kubetune.api.job import FineTuneJob
from kubetune.api.status import Reason
from kubetune.operator import builders, quota, refusals
from kubetune.operator.caches import Caches
from kubetune.operator.kube import ApiError, Kube
from kubetune.operator.owners import ForeignObjectError, owner_uids
from kubetune.operator.progress import pod_token
from kubetune.operator.store import Store
from kubetune.policies.reconcile import CreateRefusal


class GangCreator:
    """Creates the workers of one attempt, with the job's shared children."""

    def __init__(self, kube: Kube, caches: Caches, build: builders.BuildSettings) -> None:
        self.kube = kube
        self.caches = caches
        self.build = build

    async def create(
        self, job: FineTuneJob, body: dict[str, Any], attempt: int, indexes: tuple[int, ...]
    ) -> CreateRefusal | None:
        """Create workers `indexes` of `attempt`; the refusal that stopped it, or None when all exist.
        Raises kube.StaleObjectError while a deleted namesake's objects are in the way."""
        token = self._token(job, attempt)
        pods = [builders.build_worker_pod(job, attempt, index, self.build, token) for index in indexes]
        shortfall = quota.gang_shortfall(self.caches.quotas.indexed(job.namespace), pods)
        if shortfall is not None:
            return CreateRefusal(True, Reason.QUOTA_EXCEEDED, shortfall)
        uid = job.metadata.uid or ""
        try:
            if not self._exists(self.caches.services, builders.build_service(job), uid):
                self.caches.record(await self.kube.create_service(builders.build_service(job), uid))
            policy = builders.build_network_policy(job, attempt, self.build)
            if policy is not None:  # before the pods: no packet reaches them unfiltered
                await self.kube.create_network_policy(policy, uid)
            configmap = builders.build_configmap(job, body.get("spec") or {})
            if not self._exists(self.caches.configmaps, configmap, uid):
                self.caches.record(await self.kube.create_configmap(configmap, uid))
            for pod in pods:
                self.caches.record(await self.kube.create_pod(pod, uid))
        except ForeignObjectError as taken:  # someone's own object has the child's name: never deleted
            return CreateRefusal(False, Reason.NAME_TAKEN, str(taken))
        except ApiError as error:
            refusal = refusals.classify(error.status, error.details, str(error))
            if refusal is None:
                raise
            return refusal
        return None

    def _token(self, job: FineTuneJob, attempt: int) -> str:
        """The attempt's token for rank 0's endpoints: the one worker 0 of `attempt` already carries (a gang
        completed in parts), else a new one. Random, not derived: nothing else needs to know it, and the
        operator reads it back from worker 0's spec in its cache (it survives an operator restart)."""
        for pod in self.caches.pods.indexed(job.namespace, job.name):
            labels = pod.get("metadata", {}).get("labels") or {}
            same = labels.get(builders.ATTEMPT_LABEL) == str(attempt) and labels.get(builders.INDEX_LABEL) == "0"
            if same and job.metadata.uid in owner_uids(pod) and (token := pod_token(pod)):
                return token
        return secrets.token_urlsafe(32)

    @staticmethod
    def _exists(store: Store, manifest: dict[str, Any], uid: str) -> bool:
        """Whether the cache holds this child of this job already (a restart re-creates only the pods)."""
        cached = store.get(manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        return cached is not None and uid in owner_uids(cached)
