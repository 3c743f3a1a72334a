"""Every object the reconcile reads, kept by watches: one store per kind, filled once, then followed.

- FineTuneJobs: an informer too (its re-list after an expired watch drops jobs deleted meanwhile,
  which kopf's re-list does not report); kopf's own watch of the jobs feeds the same store and is
  where the reconcile workers start (handlers.py says why);
- pods, Services and ConfigMaps: one informer each, selected on the server by the
  `kubetune.io/job-name` label, indexed by the job they belong to;
- ResourceQuotas: one informer, indexed by namespace (a gang is checked against them before creation);
- Nodes: one informer, cluster-wide, slimmed to their Ready condition (nodes.py): the brake on mass node
  loss counts them, and a worker's node is read from it. It is the one cache the operator starts
  without: an operator that may not list Nodes (a chart older than the brake) logs so, reads a suspect
  worker's Node by GET as before, and runs without the brake. A Node's change wakes no job: a lost
  node's pods change too (the node lifecycle controller marks them not Ready), and every running job is
  reconciled every `reconcile_interval` anyway;
- with `--kueue`: Workloads (the job-name label again) and ResourceFlavors (cluster-scoped).

With `--namespace`, each kind is watched in each of those namespaces; otherwise once, cluster-wide.
Reconciles read the stores only; `record` puts the answer of the operator's own writes in at once.
A watch is resumed from its last resourceVersion and re-listed when the server says it expired, and
every 30 minutes (informer.py); nothing is read per job.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.operator.builders import JOB_LABEL
from kubetune.operator.informer import Informer, Source, WatchTimeouts
from kubetune.operator.kube import KUEUE_GROUP, KUEUE_VERSION, Kube
from kubetune.operator.nodes import slim_node
from kubetune.operator.store import Store, by_namespace

logger = logging.getLogger(__name__)

#: Called with (namespace, job name) when something of that job changed.
JobChanged = Callable[[str, str], None]
#: Kinds the operator runs without when they cannot be listed (see the module docstring).
OPTIONAL_KINDS = frozenset({"nodes"})
#: Seconds an optional kind may take to list once the others have: one LIST, where it is allowed.
OPTIONAL_SYNC_SECONDS = 5.0


class Caches:
    """The stores, and the informers that fill them."""

    def __init__(self, kueue: bool = False) -> None:
        self.jobs = Store("finetunejobs", by_namespace)
        self.pods = Store("pods")
        self.services = Store("services")
        self.configmaps = Store("configmaps")
        self.quotas = Store("resourcequotas", by_namespace)
        self.workloads = Store("workloads")
        self.flavors = Store("resourceflavors", by_namespace)
        self.nodes = Store("nodes", by_namespace, shape=slim_node)
        self.kueue = kueue
        self.informers: list[Informer] = []
        self._by_kind = {
            "FineTuneJob": self.jobs,
            "Pod": self.pods,
            "Service": self.services,
            "ConfigMap": self.configmaps,
            "Workload": self.workloads,
        }

    def record(self, obj: dict[str, Any] | None) -> None:
        """Put the answer of one of the operator's writes (create, patch, delete) in its store."""
        if obj is None:
            return
        store = self._by_kind.get(obj.get("kind", ""))
        if store is not None:
            store.upsert(obj)

    def job_keys_in(self, namespace: str) -> list[tuple[str, str]]:
        return [(namespace, job["metadata"]["name"]) for job in self.jobs.indexed(namespace)]

    def _sources(self, kube: Kube, namespaces: tuple[str, ...]) -> Iterator[tuple[Source, Store, str]]:
        """(source, store, what a change wakes: "job", "namespace" or "all")."""
        selector = JOB_LABEL
        core, custom = kube.core, kube.custom
        namespaced: list[tuple[str, Store, Callable[..., Any], Callable[..., Any], str | None, str]] = [
            ("pods", self.pods, core.list_namespaced_pod, core.list_pod_for_all_namespaces, selector, "job"),
            ("services", self.services, core.list_namespaced_service, core.list_service_for_all_namespaces,
             selector, "job"),
            ("configmaps", self.configmaps, core.list_namespaced_config_map, core.list_config_map_for_all_namespaces,
             selector, "job"),
            ("resourcequotas", self.quotas, core.list_namespaced_resource_quota,
             core.list_resource_quota_for_all_namespaces, None, "namespace"),
        ]  # fmt: skip
        jobs_in = functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION)
        all_jobs = functools.partial(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        namespaced.append((PLURAL, self.jobs, jobs_in, all_jobs, None, "self"))
        if self.kueue:
            workloads = functools.partial(custom.list_namespaced_custom_object, KUEUE_GROUP, KUEUE_VERSION)
            every = functools.partial(custom.list_cluster_custom_object, KUEUE_GROUP, KUEUE_VERSION, "workloads")
            namespaced.append(("workloads", self.workloads, workloads, every, selector, "job"))
            flavors = functools.partial(
                custom.list_cluster_custom_object, KUEUE_GROUP, KUEUE_VERSION, "resourceflavors"
            )
            yield Source("resourceflavors", flavors), self.flavors, "all"
        yield Source("nodes", core.list_node), self.nodes, "none"
        for kind, store, in_namespace, everywhere, label, wakes in namespaced:
            if not namespaces:
                yield Source(kind, everywhere, None, label), store, wakes
            for namespace in namespaces:
                if kind in ("workloads", PLURAL):
                    call = functools.partial(in_namespace, namespace, kind)
                else:
                    call = functools.partial(in_namespace, namespace)
                yield Source(kind, call, namespace, label), store, wakes

    def start(self, kube: Kube, namespaces: tuple[str, ...], timeouts: WatchTimeouts, changed: JobChanged) -> None:
        """Start one informer per source, in the running event loop."""
        loop = asyncio.get_running_loop()

        def waker(wakes: str) -> Callable[[dict[str, Any]], None]:
            def wake(obj: dict[str, Any]) -> None:
                metadata = obj.get("metadata") or {}
                namespace = metadata.get("namespace") or ""
                if wakes == "none":
                    return
                if wakes == "self":
                    changed(namespace, metadata.get("name") or "")
                    return
                if wakes == "job":
                    job = (metadata.get("labels") or {}).get(JOB_LABEL)
                    if job:
                        changed(namespace, job)
                    return
                keys = self.job_keys_in(namespace) if wakes == "namespace" else list(self.jobs.object_keys())
                for job_namespace, job in keys:
                    changed(job_namespace, job)

            return wake

        for source, store, wakes in self._sources(kube, namespaces):
            self.informers.append(Informer(source, store, waker(wakes), timeouts, loop).start())

    def synced(self, kind: str) -> bool:
        """Whether the informers of `kind` have listed (an optional kind may never: no permission)."""
        mine = [informer for informer in self.informers if informer.source.kind == kind]
        return bool(mine) and all(informer.synced.is_set() for informer in mine)

    async def wait_synced(self, timeout: float) -> list[str]:
        """Wait until every informer of a kind the operator needs has listed once; those kinds that have not
        after `timeout` seconds. An optional kind (OPTIONAL_KINDS) not listed by then is only logged."""
        late = await self._wait([i for i in self.informers if i.source.kind not in OPTIONAL_KINDS], timeout)
        optional = [i for i in self.informers if i.source.kind in OPTIONAL_KINDS]
        for kind in await self._wait(optional, min(timeout, OPTIONAL_SYNC_SECONDS)):
            logger.warning(
                "cannot list %s yet (the log above says why; without RBAC permission to list and watch them, "
                "grant the chart's ClusterRole with helm upgrade): until then the brake on mass node loss is "
                "off, and every node that stops reporting is handled as lost after retryPolicy."
                "nodeLostGraceSeconds",
                kind,
            )
        return late

    @staticmethod
    async def _wait(informers: list[Informer], timeout: float) -> list[str]:
        """Wait until `informers` have listed once; the kinds that have not after `timeout` seconds."""
        tasks = [(informer.source.kind, asyncio.ensure_future(informer.synced.wait())) for informer in informers]
        if tasks:
            await asyncio.wait([task for _, task in tasks], timeout=timeout)
        for _, task in tasks:
            task.cancel()
        return sorted({kind for kind, task in tasks if not task.done()})

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop(timeout=0.0)
        for informer in self.informers:
            informer.stop(timeout=5.0)
        self.informers.clear()
