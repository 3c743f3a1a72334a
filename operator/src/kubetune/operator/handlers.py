"""The kopf handlers: small functions that only wake, run and report the reconciler.

- `finetunejob_daemon`: one per job, the level-triggered loop: reconcile, then sleep until woken by a
  change or until the next check is due (at most `reconcile_interval`).
- `finetunejob_event` / `pod_event`: any change of a job or of one of its pods wakes that job's loop,
  so reactions are immediate; the loop's own timing only guarantees that nothing is missed.
- `operator_login`: kopf authenticates with the same configuration as the `kubernetes` client
  (kube.load_configuration), so both sides use one set of credentials.
- `operator_probe`: the liveness endpoint reports how many jobs are being reconciled.

Handlers are registered on a registry per operator instance (`build_registry`), not kopf's global one,
so several operators can run in one process (tests) without sharing state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
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
    """One wake-up event per job, shared by the job's daemon and the event handlers."""

    def __init__(self) -> None:
        self._wakes: dict[tuple[str, str], asyncio.Event] = {}

    def event(self, namespace: str, name: str) -> asyncio.Event:
        return self._wakes.setdefault((namespace, name), asyncio.Event())

    def wake(self, namespace: str | None, name: str | None) -> None:
        wake = self._wakes.get((namespace or "", name or ""))
        if wake is not None:
            wake.set()

    def forget(self, namespace: str, name: str) -> None:
        self._wakes.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._wakes)


async def run_job_loop(
    reconciler: Reconciler, loops: JobLoops, settings: OperatorSettings, namespace: str, name: str, stopped: Any
) -> None:
    """Reconcile one job until it is deleted or the operator stops."""
    wake = loops.event(namespace, name)
    first_delay, max_delay = settings.error_backoff
    error_delay = first_delay
    try:
        while not stopped:
            wake.clear()
            try:
                outcome = await reconciler.reconcile(namespace, name)
            except Exception:
                logger.exception("reconciling %s/%s failed; retrying in %.1fs", namespace, name, error_delay)
                wait, error_delay = error_delay, min(error_delay * 2, max_delay)
            else:
                error_delay = first_delay
                if not outcome.exists:
                    return
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

    @kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=1.0, registry=registry)
    async def finetunejob_daemon(namespace: str | None, name: str, stopped: Any, **_: Any) -> None:
        await run_job_loop(reconciler, loops, settings, namespace or "default", name, stopped)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def finetunejob_event(namespace: str | None, name: str | None, **_: Any) -> None:
        loops.wake(namespace, name)

    @kopf.on.event("", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT}, registry=registry)
    def pod_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
        loops.wake(namespace, labels.get(JOB_LABEL))

    return registry
