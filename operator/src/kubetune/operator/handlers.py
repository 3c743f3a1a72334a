"""The kopf handlers: small functions that fill the caches, queue reconciles and report.

- `start_caches` (kopf's startup): starts the informers (kubetune.operator.caches) and, once every one
  has listed, the reconcile workers (kubetune.operator.workqueue); a cache that cannot fill (no RBAC
  permission to list a kind) stops the operator with a message naming the kinds.
- `finetunejob_event`: every event of a job (kopf lists every existing job when it starts, then
  watches) puts the job in the cache and queues its reconcile.
- the informers queue a job's reconcile on every change of its pods, Service, ConfigMap or Workload,
  and every job of a namespace whose ResourceQuota changed (a gang refused for quota is retried).
- each reconcile says when it must run again (`next_reconcile_in`): deadlines fire on time; a running
  job is looked at when its pods, itself or its rank 0's progress (kubetune.operator.progress_poller,
  queued in the work queue's low-priority lane) change, and otherwise only every
  `running_resync_interval`; nothing re-reads the API server on a timer.
- `stop_reconciling` (kopf's cleanup): stops the workers and the informers.
- `operator_login`: kopf authenticates with the same configuration as the `kubernetes` client
  (kube.load_configuration), so both sides use one set of credentials.
- the probes (kubetune.operator.health) report how many jobs are cached and queued, and readiness once
  the caches have listed.

Why no `kopf.daemon` per job: kopf puts a finalizer on every object that has a daemon, so a FineTuneJob
deleted while the operator is not running (uninstalled, crashed, scaled to zero) would hang in
Terminating for ever. kubetune needs no finalizer: every child carries an owner reference, so
Kubernetes' garbage collector removes the gang, the Service and the ConfigMap whether or not the
operator runs. With no handler that requires one, kopf also removes the finalizer that earlier versions
left on existing jobs.

Handlers are registered on a registry per operator instance (`build_registry`), not kopf's global one,
so several operators can run in one process (tests) without sharing state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping
from typing import Any, cast

import kopf
from kubernetes import client as k8s

from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.operator.health import OperatorState
from kubetune.operator.reconciler import Outcome, Reconciler
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.workqueue import WorkQueue

logger = logging.getLogger(__name__)


def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the `kubernetes` client configuration."""
    if configuration.refresh_api_key_hook is not None:
        configuration.refresh_api_key_hook(configuration)
    api_key = configuration.api_key or {}
    token = api_key.get("authorization") or api_key.get("BearerToken")
    scheme = (configuration.api_key_prefix or {}).get("authorization")
    if token and " " in token:
        scheme, token = token.split(" ", 1)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme if token else None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def next_reconcile_in(outcome: Outcome, settings: OperatorSettings) -> float | None:
    """Seconds until a job is reconciled again without an event; None once it is gone."""
    if not outcome.exists:
        return None
    if outcome.finished:
        interval = settings.finished_interval
    else:
        interval = settings.running_resync_interval if outcome.polled else settings.reconcile_interval
    wait = min(outcome.check_again_in, interval) if outcome.check_again_in is not None else interval
    return max(wait, settings.min_interval)


def build_registry(
    reconciler: Reconciler, settings: OperatorSettings, configuration: k8s.Configuration, state: OperatorState
) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers, bound to this reconciler."""
    registry = kopf.OperatorRegistry()
    caches = reconciler.caches

    async def reconcile(key: Hashable) -> float | None:
        namespace, name = cast(tuple[str, str], key)
        return next_reconcile_in(await reconciler.reconcile(namespace, name), settings)

    queue = WorkQueue(reconcile, settings.reconcile_workers, settings.error_backoff)
    synced = asyncio.Event()

    def job_changed(namespace: str, name: str) -> None:
        queue.add((namespace, name))

    def progress_to_say(key: Hashable, seconds: float) -> None:  # behind every other reconcile (low priority)
        queue.add_after(key, seconds, low=True)

    reconciler.poller.notify = progress_to_say

    @kopf.on.login(registry=registry)
    def operator_login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(configuration)

    @kopf.on.startup(registry=registry)
    async def start_caches(**_: Any) -> None:
        caches.start(reconciler.kube, settings.namespaces, settings.watch_timeouts(), job_changed)
        late = await caches.wait_synced(settings.cache_sync_timeout)
        if late:
            await asyncio.to_thread(caches.stop)
            raise kopf.PermanentError(
                f"could not list {', '.join(late)} within {settings.cache_sync_timeout:.0f} s: check the operator's "
                "RBAC (the chart's ClusterRole) and its connection to the API server; the log says why"
            )
        synced.set()
        state.synced = True

    state.details = lambda: {"cached": len(caches.jobs), "queued": queue.depth()}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def finetunejob_event(event: Mapping[str, Any], namespace: str | None, name: str | None, **_: Any) -> None:
        if name is None:
            return
        if not queue.started:
            await synced.wait()
            queue.start()
        body = dict(event.get("object") or {})
        changed = caches.jobs.remove(body) if event.get("type") == "DELETED" else caches.jobs.upsert(body)
        if changed:  # (not the state the job informer or the operator's own write stored: queued then)
            queue.add((namespace or "default", name))

    @kopf.on.cleanup(registry=registry)
    async def stop_reconciling(**_: Any) -> None:
        await reconciler.poller.stop()
        await queue.stop(timeout=5.0)
        await asyncio.to_thread(caches.stop)

    return registry
