"""A harness that runs the real operator in-process against an emulated API server.

`Cluster` is the reusable entry point: an async context manager that serves `ApiServer` (see
tests/support/emulator.py: kmock's emulator with real API-server semantics) on a local port, declares
the resources kopf needs (CRDs, namespaces, events: kopf waits for the CRD resource before it watches
anything), and starts the operator (`kubetune.operator.main.run_operator`) in a thread with its own
event loop; `restart_operator()` stops it and starts a fresh one. Its `kubelet_*` helpers patch pod
statuses the way a kubelet would; `reconciled(name)` waits until the operator has reconciled a job a few
more times, so that a test can then assert that nothing happened. `write_kubeconfig` serves
`kubetune operator` run as a subprocess. (Waiting: tests/support/waiting.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml
from kmock._internal import rendering
from kubernetes import client as k8s

from kubetune.operator import metrics
from kubetune.operator.main import run_operator
from kubetune.operator.progress import ProgressSource
from kubetune.operator.settings import OperatorSettings
from tests.support.emulator import (
    JOBS,
    KUBELET_FINALIZER,
    PODS,
    ApiServer,
    declare_resources,
    label_selector_matches,
    now_rfc3339,
)
from tests.support.waiting import GiveUp, eventually_async

__all__ = [
    "JOBS",
    "KUBELET_FINALIZER",
    "PODS",
    "ApiServer",
    "Cluster",
    "OperatorThread",
    "configuration_for",
    "declare_resources",
    "fast_settings",
    "label_selector_matches",
    "write_kubeconfig",
]


def configuration_for(url: str) -> k8s.Configuration:
    """Client configuration for the emulator (plain HTTP, no credentials)."""
    configuration = k8s.Configuration()
    configuration.host = url.rstrip("/")
    return configuration


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    """A kubeconfig pointing at the emulator, for `kubetune operator` run as a subprocess."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url.rstrip("/")}}],
        "users": [{"name": "emulator", "user": {"token": "emulator"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorThread:
    """The real operator (kopf and all) in a thread with its own event loop."""

    def __init__(
        self, settings: OperatorSettings, configuration: k8s.Configuration, progress: ProgressSource | None
    ) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(run_operator(settings, configuration, progress, self._stop, self._ready))
            except BaseException as error:  # reported by stop()
                self._errors.append(error)

        self._thread = threading.Thread(target=main, name="kubetune-operator", daemon=True)

    async def start(self, timeout: float = 20.0) -> None:
        self._thread.start()

        def ready() -> bool:
            if self._ready.is_set():
                return True
            if self._errors or not self._thread.is_alive():
                raise GiveUp(f"the operator did not start: {self._errors}")
            return False

        await eventually_async(ready, timeout, interval=0.02, message="the operator to become ready")

    async def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():
            raise TimeoutError("the operator did not stop")
        if self._errors:
            raise self._errors[0]


class Cluster:
    """An emulated API server with the operator running against it, and kubelet-like helpers."""

    def __init__(
        self,
        settings: OperatorSettings | None = None,
        progress: ProgressSource | None = None,
        graceful_pod_deletion: bool = False,
        namespace: str = "default",
        start_operator: bool = True,
    ) -> None:
        self.settings = settings or fast_settings()
        self.progress = progress
        self.namespace = namespace
        self.server = ApiServer()
        self.server.graceful_pod_deletion = graceful_pod_deletion
        declare_resources(self.server)
        self._exit = contextlib.AsyncExitStack()
        self.operator: OperatorThread | None = None
        self.url = ""
        self._start_operator = start_operator

    async def __aenter__(self) -> Cluster:
        await self._exit.enter_async_context(self.server)
        http = await self._exit.enter_async_context(kmock.Server(self.server))
        self.url = str(http.url)
        if self._start_operator:
            await self.start_operator()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop_operator()
        finally:
            await self._exit.aclose()

    async def start_operator(self) -> None:
        self.operator = OperatorThread(self.settings, configuration_for(self.url), self.progress)
        await self.operator.start()

    async def stop_operator(self) -> None:
        if self.operator is not None:
            operator, self.operator = self.operator, None
            await operator.stop()

    async def restart_operator(self) -> None:
        await self.stop_operator()
        await self.start_operator()

    def requests(self) -> list[rendering.Request]:
        """Every request the emulator served, in order."""
        return list(self.server)

    # --- Objects ------------------------------------------------------------------------------------

    def _key(self, resource: str, name: str) -> Any:
        return (kmock.resource(resource), self.namespace, name)

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        key = self._key(resource, name)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return None
        return copy.deepcopy(dict(self.server.objects[key].raw))

    def list(self, resource: str, labels: str | None = None) -> list[dict[str, Any]]:
        items = []
        for (res, namespace, _), obj in self.server.objects.items():
            ours = res == kmock.resource(resource) and namespace == self.namespace and not obj.deleted
            if ours and label_selector_matches(labels, obj.raw.get("metadata", {}).get("labels")):
                items.append(copy.deepcopy(dict(obj.raw)))
        return items

    async def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url.rstrip("/") + path, json=body, headers=headers) as response,
        ):
            payload: dict[str, Any] = await response.json(content_type=None)
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {payload}")
            return payload

    def _path(self, resource: str, name: str | None = None, subresource: str | None = None) -> str:
        group_version, plural = resource.rsplit("/", 1)
        prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{prefix}/namespaces/{self.namespace}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")

    async def create_job(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(dict(manifest))
        body.setdefault("metadata", {})["namespace"] = self.namespace
        return await self.request("POST", self._path(JOBS), body)

    async def patch_job(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", self._path(JOBS, name), dict(patch))

    async def delete_job(self, name: str) -> None:
        await self.request("DELETE", self._path(JOBS, name))

    def job(self, name: str) -> dict[str, Any]:
        job = self.get(JOBS, name)
        assert job is not None, f"FineTuneJob {name} does not exist"
        return job

    def status(self, name: str) -> dict[str, Any]:
        return self.job(name).get("status") or {}

    def pods(self, job_name: str, attempt: int | None = None) -> list[dict[str, Any]]:
        selector = f"kubetune.io/job-name={job_name}" + (f",kubetune.io/attempt={attempt}" if attempt else "")
        return sorted(self.list(PODS, selector), key=lambda p: p["metadata"]["name"])

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.list("v1/events") if e.get("involvedObject", {}).get("name") == name]

    # --- The operator's work ------------------------------------------------------------------------

    def reconciles(self, name: str) -> int:
        """How many times the in-process operator has reconciled the job so far (counted in memory by
        kubetune.operator.metrics, once per reconcile, when it records the job's phase: after deciding,
        before creating or deleting pods)."""
        return metrics.reconciles(self.namespace, name)

    async def reconciled(self, name: str, times: int = 2, timeout: float = 10.0) -> None:
        """Wait until the operator has run `times` complete reconciles of the job, each begun after this
        call: only then can a test assert that something did *not* happen. A reconcile counts part-way,
        so that takes `times + 2` more counts (the first may be one already running, the last one that
        has only begun)."""
        wanted = self.reconciles(name) + times + 2
        await eventually_async(
            lambda: self.reconciles(name) >= wanted, timeout, message=f"{times} more reconciles of {name}"
        )

    # --- What a kubelet would do --------------------------------------------------------------------

    async def patch_pod_status(self, pod: str, status: Mapping[str, Any]) -> None:
        await self.request("PATCH", self._path(PODS, pod, "status"), {"status": dict(status)})

    async def kubelet_run(self, pod: str, ip: str = "127.0.0.1") -> None:
        """The pod was scheduled and its trainer container runs."""
        await self.patch_pod_status(
            pod,
            {
                "phase": "Running",
                "podIP": ip,
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}],
                "containerStatuses": [
                    {"name": "trainer", "ready": True, "state": {"running": {"startedAt": now_rfc3339()}}}
                ],
            },
        )

    async def kubelet_exit(self, pod: str, exit_code: int, message: str = "", reason: str | None = None) -> None:
        """The trainer container terminated (the pod's restartPolicy is Never)."""
        terminated: dict[str, Any] = {"exitCode": exit_code, "message": message, "finishedAt": now_rfc3339()}
        terminated["reason"] = reason or ("Completed" if exit_code == 0 else "Error")
        await self.patch_pod_status(
            pod,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [{"name": "trainer", "ready": False, "state": {"terminated": terminated}}],
            },
        )

    async def kubelet_disrupt(self, pod: str, reason: str = "PreemptionByScheduler") -> None:
        """The pod was preempted/evicted: DisruptionTarget, then its container is killed with SIGTERM."""
        condition = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": reason,
            "message": f"{reason}: test",
            "lastTransitionTime": now_rfc3339(),
        }
        terminated = {"exitCode": 143, "reason": "Error", "finishedAt": now_rfc3339()}
        await self.patch_pod_status(
            pod,
            {
                "phase": "Failed",
                "conditions": [condition],
                "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
            },
        )

    async def kubelet_waiting(self, pod: str, reason: str, since: str) -> None:
        """The container cannot start: e.g. ImagePullBackOff since `since` (RFC 3339)."""
        await self.patch_pod_status(
            pod,
            {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": since}],
                "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": reason, "message": "test"}}}],
            },
        )

    async def kubelet_finish_deletion(self, pod: str) -> None:
        """With graceful deletion: the containers stopped, the pod object may go."""
        await self.request("PATCH", self._path(PODS, pod), {"metadata": {"finalizers": None}})


def fast_settings(**overrides: Any) -> OperatorSettings:
    """Operator settings for tests: short intervals, no metrics or health ports unless asked."""
    values: dict[str, Any] = {
        "trainer_image": "kubetune/trainer:test",
        "reconcile_interval": 0.3,
        "running_resync_interval": 0.3,  # tests assert that nothing happened over a few looks at a running job
        "finished_interval": 0.3,
        "min_interval": 0.02,
        "error_backoff": (0.1, 1.0),
        "metrics_port": None,
        "health_port": None,
        "listen_address": "127.0.0.1",
        "progress_timeout": 1.0,
        "progress_write_interval": 0.2,
        "progress_unchanged_read_max": 0.4,
        "watch_server_timeout": 60,
        "watch_client_timeout": 90,
    }
    values.update(overrides)
    return OperatorSettings(**values)
