"""The benchmark's view of the emulated API server: every request recorded, and a harness around it.

`MeasuredApiServer` is the tests' `ApiServer` (kmock plus real API-server semantics) that also records
each request (when, how long it took, whose it was, which job it concerns) and stamps every pod
create. `Harness` serves it, starts the real `kubetune operator` command against it as a subprocess,
and makes requests as users and kubelets would (user agent `kubetune-bench`, so that every other
request is the operator's). `Sampler` follows the operator process's memory and per-thread CPU.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import psutil
from kmock._internal import enums, rendering

from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.operator.builders import JOB_LABEL
from tests.support.apiserver import write_kubeconfig
from tests.support.builders import a_job
from tests.support.emulator import ApiServer, declare_resources, now_rfc3339
from tests.support.waiting import GiveUp, eventually_async

AGENT = "kubetune-bench"
NAMESPACE = "bench"
WORKERS = 2
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Served:
    """One request the emulator served."""

    at: float
    """time.monotonic() when it was answered."""
    seconds: float
    """Time the emulator spent on it (watches: until the stream ended)."""
    ours: bool
    """Made by this benchmark (the user / kubelet), not by the operator."""
    action: str
    resource: str
    name: str | None
    job: str | None
    """The FineTuneJob it concerns, where the path, selector or body says."""


def _job_of(request: rendering.Request) -> str | None:
    name = request.name or ""
    resource = (request.resource.plural if request.resource else None) or ""
    if resource.endswith(PLURAL):
        return name or None
    if resource.endswith("pods") and "-a" in name:
        return name.rsplit("-a", 1)[0]
    if resource.endswith("configmaps") and name.endswith("-config"):
        return name.removesuffix("-config")
    if resource.endswith("services"):
        return name or None
    selector = request.params.get("labelSelector", "") if request.params else ""
    if "job-name=" in selector:
        return selector.split("job-name=", 1)[1].split(",", 1)[0]
    if isinstance(request.data, dict):
        involved = request.data.get("involvedObject") or {}
        return involved.get("name")
    return None


class MeasuredApiServer(ApiServer):
    """The tests' emulated API server, recording every request and every pod create.

    It also forgets each request once answered. kmock keeps every request it ever served and decides
    how to answer a new one by testing its reactions' filters against that whole history, so each
    request costs time in proportion to all before it (profiled: at 20 jobs, 79 of 90 CPU seconds in
    kmock's `filtering._check`, and 100-180 ms per request). Forgetting answered requests keeps that
    cost constant, so the benchmark measures the operator, not the emulator's history.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pods_by_job: dict[str, list[Any]] = collections.defaultdict(list)
        self.served: list[Served] = []
        self.pod_created: dict[str, float] = {}
        """Pod name -> time.monotonic() of its create."""

    async def _handle(self, request: rendering.Request) -> Any:
        began = time.monotonic()
        try:
            return await super()._handle(request)
        finally:
            self._forget(request)
            now = time.monotonic()
            resource = (request.resource.plural if request.resource else None) or ""
            action = request.action.value if request.action else "OTHER"
            if request.action == enums.action.CREATE and resource.endswith("pods") and isinstance(request.data, dict):
                meta = request.data.get("metadata", {})
                self.pod_created[meta.get("name", "")] = now
                job = (meta.get("labels") or {}).get(JOB_LABEL)
                key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
                if job and key not in self._pods_by_job[job]:
                    self._pods_by_job[job].append(key)
            agent = request.headers.get("User-Agent", "") if request.headers else ""
            self.served.append(
                Served(now, now - began, agent == AGENT, action, resource, request.name, _job_of(request))
            )

    def _KubernetesEmulator__get_objs(self, request: rendering.Request, strict: bool) -> list[Any]:
        """kmock finds the objects of every get and list by scanning all objects it holds, so each
        request costs time in proportion to everything stored (1,000 jobs: 2,000 pods, their ConfigMaps,
        Services and a growing heap of events), and the operator's per-job reconciles (a get and a
        pod list each) add up to quadratic work that saturated this process at 1,000 jobs (measured: one
        full core; pod lists 17 ms each). Named objects are looked up by key and a job's pods through an
        index kept on create, as a real API server's cache does; the label selector is still applied
        by `ApiServer._serve_list`. Anything else takes kmock's own scan."""
        if request.name is not None and request.namespace is not None:
            key = (request.resource, request.namespace, request.name)
            return [self._objects[key]] if key in self._objects else []
        selector = request.params.get("labelSelector", "") if request.params else ""
        if request.resource is not None and request.resource.plural == "pods" and f"{JOB_LABEL}=" in selector:
            job = selector.split(f"{JOB_LABEL}=", 1)[1].split(",", 1)[0]
            keys = self._pods_by_job.get(job, [])
            return [self._objects[k] for k in keys if k in self._objects and k[1] == request.namespace]
        scan: list[Any] = kmock.KubernetesEmulator._KubernetesEmulator__get_objs(self, request, strict)  # type: ignore[attr-defined]
        return scan

    def _forget(self, request: rendering.Request) -> None:
        history = self._requests
        for index in range(len(history) - 1, -1, -1):
            if history[index] is request:
                del history[index]
                return


def job_manifest(name: str) -> dict[str, Any]:
    job = a_job(name).in_namespace(NAMESPACE).workers(WORKERS).accelerator("cpu")
    return job.storage(f"pvc://ckpt/{name}").retry(max_restarts=3, backoff_seconds=0).build()


class Sampler:
    """Peak RSS and per-thread CPU time of a process, sampled from a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def cpu(self) -> dict[int, float]:
        """CPU seconds (user + system) per thread id."""
        return {t.id: t.user_time + t.system_time for t in self.process.threads()}


async def stop_operator(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM the operator process; SIGKILL it when it has not ended after `timeout` seconds."""
    if process is None:
        return
    process.terminate()
    try:
        await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        process.kill()


class Harness:
    """A served MeasuredApiServer plus the operator subprocess."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server = MeasuredApiServer()
        declare_resources(self.server)
        self._exit = contextlib.AsyncExitStack()
        self.url = ""
        self.operator: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Harness:
        await self._exit.enter_async_context(self.server)
        http = await self._exit.enter_async_context(kmock.Server(self.server))
        self.url = str(http.url).rstrip("/")
        connector = aiohttp.TCPConnector(limit=32)
        self.session = await self._exit.enter_async_context(
            aiohttp.ClientSession(connector=connector, headers={"User-Agent": AGENT})
        )
        kubeconfig = write_kubeconfig(self.folder / "kubeconfig", self.url, NAMESPACE)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONWARNINGS": "ignore"}
        command = [sys.executable, "-m", "kubetune.cli", "operator", "-A", "--metrics-port=0", "--health-port=0"]
        log = self._exit.enter_context((self.folder / "operator.log").open("wb"))
        self.operator = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        # kopf lists each resource before it watches it (a watch is recorded only when it ends).
        await self._wait(lambda: any(not s.ours and s.action == "LIST" and s.resource == "pods" for s in self.served))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_operator(self.operator)
        await self._exit.aclose()

    @property
    def served(self) -> list[Served]:
        return self.server.served

    async def _wait(self, check: Any, timeout: float = 300.0, interval: float = 0.05) -> None:
        """Until `check()`; fails at once when the operator process exits."""

        def done() -> bool:
            if check():
                return True
            if self.operator is not None and self.operator.poll() is not None:
                raise GiveUp(f"the operator exited ({self.operator.returncode}); see {self.folder}/operator.log")
            return False

        await eventually_async(done, timeout, interval, message="the operator to get there")

    async def call(self, method: str, path: str, body: Any = None) -> None:
        assert self.session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {await response.text()}")

    async def each(self, calls: Iterable[tuple[str, str, Any]], concurrency: int = 16) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(method: str, path: str, body: Any) -> None:
            async with gate:
                await self.call(method, path, body)

        await asyncio.gather(*(one(*c) for c in calls))

    # --- the objects ---------------------------------------------------------------------------------

    def jobs_path(self, name: str = "") -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}" + (f"/{name}" if name else "")

    def pod_status_path(self, pod: str) -> str:
        return f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/status"

    def _job(self, name: str) -> Any:
        key = (kmock.resource(f"{GROUP}/{VERSION}/{PLURAL}"), NAMESPACE, name)
        if key not in self.server.objects or self.server.objects[key].deleted:
            return None
        return self.server.objects[key]

    def phase(self, name: str) -> str | None:
        obj = self._job(name)
        return None if obj is None else (obj.raw.get("status") or {}).get("phase")

    def exists(self, name: str) -> bool:
        return self._job(name) is not None


def pods_of(name: str, attempt: int = 1) -> list[str]:
    return [f"{name}-a{attempt}-w{index}" for index in range(WORKERS)]


def running_status() -> dict[str, Any]:
    return {
        "status": {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}],
            "containerStatuses": [
                {"name": "trainer", "ready": True, "state": {"running": {"startedAt": now_rfc3339()}}}
            ],
        }
    }


def exited_status(code: int, message: str = "", reason: str | None = None) -> dict[str, Any]:
    terminated = {
        "exitCode": code,
        "message": message,
        "finishedAt": now_rfc3339(),
        "reason": reason or ("Completed" if code == 0 else "Error"),
    }
    return {
        "status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [{"name": "trainer", "ready": False, "state": {"terminated": terminated}}],
        }
    }
