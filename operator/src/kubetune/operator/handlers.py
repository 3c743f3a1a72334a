"""The kopf handlers: small functions that only wake, run and report the reconciler.

- `finetunejob_event`: every event of a job (kopf lists every existing job when it starts, then
  watches) makes sure that job's loop runs, and wakes it. The loop (`run_job_loop`) is the
  level-triggered core: reconcile, then sleep until woken by a change or until the next check is due
  (at most `reconcile_interval`). It ends when the job is gone.
- `pod_event`: any change of one of a job's pods wakes that job's loop, so reactions are immediate; the
  loop's own timing only guarantees that nothing is missed.
- `quota_event`: a ResourceQuota that changes wakes every loop of its namespace (a gang refused for quota
  is retried when the quota changes).
- `workload_event` (with `--kueue` only): Kueue admitting, evicting or requeueing a job's Workload wakes
  that job's loop, so a gang starts or stops as soon as Kueue decides.
- `stop_job_loops` (kopf's cleanup): cancels every loop when the operator stops.
- `operator_login`: kopf authenticates with the same configuration as the `kubernetes` client
  (kube.load_configuration), so both sides use one set of credentials.
- `operator_probe`: the liveness endpoint reports how many jobs are being reconciled.

Why the loops are our own tasks and not `kopf.daemon`s: kopf puts a finalizer on every object that has a
daemon (to stop the daemon before the object goes), so a FineTuneJob deleted while the operator is not
running (uninstalled, crashed, scaled to zero) would hang in Terminating for ever. kubetune needs no
finalizer: every child carries an owner reference, so Kubernetes' garbage collector removes the gang,
the Service and the ConfigMap whether or not the operator runs, and a loop whose job is gone simply
ends. With no handler that requires one, kopf also removes the finalizer that earlier versions left on
existing jobs.

Handlers are registered on a registry per operator instance (`build_registry`), not kopf's global one,
so several operators can run in one process (tests) without sharing state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast

import kopf
from kubernetes import client as k8s

from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.operator.builders import JOB_LABEL
from kubetune.operator.reconciler import Reconciler
from kubetune.operator.settings import OperatorSettings
from kubetune.policies.status import Event

logger = logging.getLogger(__name__)


def post_kopf_event(body: Mapping[str, Any], event: Event) -> None:
    """Post a Kubernetes event through kopf's queue (it batches and never fails the caller)."""
    kopf.event(cast(Any, dict(body)), type=event.type, reason=event.reason, message=event.message)


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


class JobLoops:
    """The running loop (an asyncio task) and the wake-up event of every job."""

    def __init__(self) -> None:
        self._wakes: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def event(self, namespace: str, name: str) -> asyncio.Event:
        return self._wakes.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str | None, name: str | None) -> None:
        wake = self._wakes.get((namespace or "", name or ""))
        if wake is not None:
            wake.set()

    def wake_namespace(self, namespace: str | None) -> None:
        for (job_namespace, _), wake in self._wakes.items():
            if job_namespace == (namespace or ""):
                wake.set()

    def ensure_running(self, namespace: str, name: str, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start the job's loop unless it runs; wake it either way."""
        key = (namespace, name)
        task = self._tasks.get(key)
        if task is None or task.done():
            self.event(namespace, name)
            self._tasks[key] = asyncio.get_running_loop().create_task(start(), name=f"reconcile {namespace}/{name}")
        self.wake(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        self._wakes.pop((namespace, name), None)
        self._tasks.pop((namespace, name), None)

    async def stop_all(self, timeout: float) -> None:
        """Cancel every loop and wait (at most `timeout` seconds) for them to end."""
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def __len__(self) -> int:
        return len(self._tasks)


async def run_job_loop(
    reconciler: Reconciler, loops: JobLoops, settings: OperatorSettings, namespace: str, name: str
) -> None:
    """Reconcile one job until it is gone (deleted, or its TTL passed) or the loop is cancelled."""
    wake = loops.event(namespace, name)
    first_delay, max_delay = settings.error_backoff
    error_delay = first_delay
    try:
        while True:
            wake.clear()
            try:
                outcome = await reconciler.reconcile(namespace, name)
            except Exception:
                logger.exception("reconciling %s/%s failed; retrying in %.1fs", namespace, name, error_delay)
                wait, error_delay = error_delay, min(error_delay * 2, max_delay)
            else:
                error_delay = first_delay
                if not outcome.exists and not wake.is_set():
                    return  # (woken meanwhile: a job of the same name may have been created; look again)
                interval = settings.finished_interval if outcome.finished else settings.reconcile_interval
                wait = min(outcome.check_again_in, interval) if outcome.check_again_in is not None else interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(wait, settings.min_interval))
    finally:
        loops.forget(namespace, name)


def build_registry(
    reconciler: Reconciler, settings: OperatorSettings, configuration: k8s.Configuration
) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers, bound to this reconciler."""
    registry = kopf.OperatorRegistry()
    loops = JobLoops()

    @kopf.on.login(registry=registry)
    def operator_login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(configuration)

    @kopf.on.probe(id="jobs", registry=registry)
    def operator_probe(**_: Any) -> int:
        return len(loops)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def finetunejob_event(namespace: str | None, name: str | None, type: str | None, **_: Any) -> None:
        if name is None or type == "DELETED":
            loops.wake(namespace, name)  # the running loop sees the job gone and ends
            return
        job_namespace = namespace or "default"
        loops.ensure_running(
            job_namespace, name, lambda: run_job_loop(reconciler, loops, settings, job_namespace, name)
        )

    @kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, registry=registry)
    async def pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        loops.wake(namespace, labels.get(JOB_LABEL))

    @kopf.on.event("", "v1", "resourcequotas", registry=registry)
    async def quota_event(namespace: str | None, **_: Any) -> None:
        loops.wake_namespace(namespace)

    if settings.kueue:

        @kopf.on.event("kueue.x-k8s.io", "v1beta2", "workloads", labels={JOB_LABEL: kopf.PRESENT}, registry=registry)
        async def workload_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
            loops.wake(namespace, labels.get(JOB_LABEL))

    @kopf.on.cleanup(registry=registry)
    async def stop_job_loops(**_: Any) -> None:
        await loops.stop_all(timeout=5.0)

    return registry
