"""The operator with 100 to 1,000 live jobs against the real control plane (issue 16); no trainer runs.

The control plane is the test suite's (tests/support/controlplane.py: etcd, kube-apiserver with the
production admission plugins and an audit log, kube-controller-manager), without a scheduler: the pods
stay unbound and this process plays the kubelet by writing their status, as the emulated benchmark
does. The operator is the real `kubetune operator` command in its own process, as the user
`kubetune-operator` with exactly the chart's ClusterRole (kubetune.operator.rbac), so the API server's
audit log tells its requests from everybody else's.

One run, growing: jobs are created at a steady arrival rate (default 20 jobs/s) up to each milestone
(100, 500, 1,000 live jobs); at each one the new pods are marked Running, then measured:

- create -> all pods: from this process's create request to the last of the job's pods seen by its own
  watch (pods are unbound, so nothing but the operator's create is in between);
- steady state: requests per job per minute as the audit log counts them (the operator's user, watches
  apart), and CPU of the operator, kube-apiserver and etcd, over a quiet window;
- gang restarts: one pod of up to 100 jobs fails (exit 137, OOMKilled, retryable, no backoff), spread
  over 5 s; latency from the failure's status write to the new attempt's last pod seen;
- the operator's peak RSS (psutil, every 0.2 s).

A burst (100 jobs created at once, 16 requests in flight) closes the run. `--operator-tree DIR` runs
the operator from another checkout (its src/ and operator/src/), so the same run measures a baseline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from bench import stats
from bench.emulated import Sampler, exited_status, job_manifest, pods_of, running_status, stop_operator
from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.operator import rbac
from kubetune.operator.builders import JOB_LABEL
from tests.support.controlplane import ADMIN_TOKEN, ControlPlane, kubeconfig

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench"
OPERATOR_USER, OPERATOR_TOKEN = "kubetune-operator", "kubetune-bench-operator-token"
CLAIMS = ("data", "ckpt")


@dataclass
class Milestone:
    """The figures at one number of live jobs."""

    jobs: int
    arrival_per_second: float
    create_to_pods_p50: float = 0.0
    create_to_pods_p99: float = 0.0
    create_to_pods_max: float = 0.0
    steady_seconds: float = 0.0
    steady_requests_per_job_minute: float = 0.0
    steady_requests_by_kind: dict[str, float] = field(default_factory=dict)
    """Per job per minute, by `verb resource` (watches are not counted: they are long-lived, not per job)."""
    steady_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per wall second at steady state: operator, kube-apiserver, etcd."""
    launch_cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per wall second while these jobs arrived."""
    restart_p50: float = 0.0
    restart_p99: float = 0.0
    restarts_measured: int = 0
    peak_rss_bytes: int = 0


class Bench:
    """The control plane, the operator process, an admin HTTP client and a watch of the pods."""

    def __init__(
        self,
        folder: Path,
        operator_tree: Path | None,
        operator_args: tuple[str, ...] = (),
        users: dict[str, str] | None = None,
        pod_label: str = JOB_LABEL,
    ) -> None:
        """`operator_args`: more flags for `kubetune operator`; `users` ({token: user}) instead of ours (the
        peer's, bench.peer: then no kubetune operator is started); `pod_label`: the pods watched carry it."""
        self.folder = folder
        self.operator_tree = operator_tree
        self.operator_args = operator_args
        self.ours = users is None
        self.user = OPERATOR_USER if users is None else next(iter(users.values()))
        self.pod_label = pod_label
        self.plane = ControlPlane(folder / "plane", users=users or {OPERATOR_TOKEN: OPERATOR_USER}, scheduler=False)
        self.operator: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.pod_seen: dict[str, float] = {}
        self._watch: asyncio.Task[None] | None = None
        self._exit = contextlib.ExitStack()

    # -- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Bench:
        (self.folder / "plane").mkdir(parents=True, exist_ok=True)
        self.plane.start(crds=ROOT / "crds")
        self._exit.callback(self.plane.stop)
        context = ssl.create_default_context(cafile=str(self.plane.ca_file))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=32, ssl=context),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        await self._setup()
        self._watch = asyncio.create_task(self._watch_pods())
        if self.ours:
            self._start_operator()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_operator(self.operator)
        if self._watch is not None:
            self._watch.cancel()
        if self.session is not None:
            await self.session.close()
        self._exit.close()

    async def _setup(self) -> None:
        """The namespace (restricted), the claims bound to volumes, the operator's RBAC."""
        await self.call("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted"}}})  # fmt: skip
        for claim in CLAIMS:
            spec = {"accessModes": ["ReadWriteMany"], "storageClassName": "bench"}
            await self.call("POST", "/api/v1/persistentvolumes", {"metadata": {"name": claim}, "spec": spec | {
                "capacity": {"storage": "1Gi"}, "hostPath": {"path": f"/nonexistent/{claim}"},
                "claimRef": {"namespace": NAMESPACE, "name": claim}}})  # fmt: skip
            await self.call("POST", f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims", {
                "metadata": {"name": claim},
                "spec": spec | {"volumeName": claim, "resources": {"requests": {"storage": "1Gi"}}}})  # fmt: skip
        rbac_path = "/apis/rbac.authorization.k8s.io/v1"
        await self.call("POST", f"{rbac_path}/clusterroles", {
            "metadata": {"name": OPERATOR_USER}, "rules": rbac.cluster_role_rules()})  # fmt: skip
        await self.call("POST", f"{rbac_path}/clusterrolebindings", {
            "metadata": {"name": OPERATOR_USER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_USER},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR_USER}]})  # fmt: skip

    def _start_operator(self) -> None:
        config = self.folder / "operator.kubeconfig"
        config.write_text(yaml.safe_dump(kubeconfig(self.plane.url, self.plane.ca_file, OPERATOR_TOKEN, NAMESPACE)))
        env = {**os.environ, "KUBECONFIG": str(config), "PYTHONWARNINGS": "ignore"}
        if self.operator_tree is not None:
            tree = self.operator_tree.resolve()
            env["PYTHONPATH"] = os.pathsep.join(str(tree / p) for p in ("src", "operator/src", "trainer/src"))
        command = [sys.executable, "-m", "kubetune.cli", "operator", "-A", "--metrics-port=0", "--health-port=0"]
        command += self.operator_args
        log = self._exit.enter_context((self.folder / "operator.log").open("wb"))
        self.operator = subprocess.Popen(command, cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT)

    # -- requests --------------------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        assert self.session is not None
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, self.plane.url + path, json=body, headers=headers) as response:
            if response.status >= 400 and response.status != 409:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {await response.text()}")
            return await response.json() if method == "GET" else None

    async def _watch_pods(self) -> None:
        """The time this process first saw each pod (its ADDED event)."""
        assert self.session is not None
        path = f"/api/v1/pods?watch=1&labelSelector={self.pod_label}&timeoutSeconds=3600"
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
                async with self.session.get(self.plane.url + path, timeout=timeout) as response:
                    async for line in response.content:
                        event = json.loads(line)
                        name = event.get("object", {}).get("metadata", {}).get("name")
                        if event.get("type") == "ADDED" and name:
                            self.pod_seen.setdefault(name, time.monotonic())

    async def until(self, check: Any, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.operator is not None and self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited; see {self.folder}/operator.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not there after {timeout:.0f} s; see {self.folder}/operator.log")
            await asyncio.sleep(0.05)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the operator, kube-apiserver and etcd."""
        pids = {c.name: c.process.pid for c in self.plane.components if c.process is not None}
        if self.operator is not None:
            pids["operator"] = self.operator.pid
        seconds = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                seconds[name] = times.user + times.system
        return seconds

    def operator_requests(self, since: float, until: float) -> list[dict[str, Any]]:
        """The operator's completed requests between two time.time() instants, from the audit log."""
        found = []
        with (self.plane.folder / "logs" / "audit.log").open() as log:
            for line in log:
                entry = json.loads(line)
                if entry.get("stage") != "ResponseComplete" or entry.get("user", {}).get("username") != self.user:
                    continue
                received = datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
                if since <= received <= until:
                    found.append(entry)
        return found


def _rates(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    return {name: round((after[name] - before.get(name, 0.0)) / seconds, 3) for name in after}


def _kind(entry: dict[str, Any]) -> str:
    ref = entry.get("objectRef") or {}
    resource = ref.get("resource", "-") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return f"{entry.get('verb')} {resource}"


async def _arrive(bench: Bench, names: list[str], per_second: float, concurrency: int = 16) -> list[float]:
    """Create the jobs at `per_second` (or all at once: 0); the create -> all pods latency of each."""
    jobs_path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
    created: dict[str, float] = {}
    gate = asyncio.Semaphore(concurrency)
    began = time.monotonic()

    async def create(index: int, name: str) -> None:
        if per_second > 0:
            await asyncio.sleep(max(0.0, began + index / per_second - time.monotonic()))
        async with gate:
            created[name] = time.monotonic()
            await bench.call("POST", jobs_path, job_manifest(name))

    await asyncio.gather(*(create(i, n) for i, n in enumerate(names)))
    await bench.until(lambda: all(p in bench.pod_seen for n in names for p in pods_of(n)))
    return [max(bench.pod_seen[p] for p in pods_of(n)) - created[n] for n in names]


async def _run_pods(bench: Bench, pods: list[str]) -> None:
    gate = asyncio.Semaphore(16)

    async def run(pod: str) -> None:
        async with gate:
            await bench.call("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/status", running_status())

    await asyncio.gather(*(run(p) for p in pods))


async def _restarts(bench: Bench, names: list[str], spread: float = 5.0) -> list[float]:
    failed: dict[str, float] = {}

    async def fail(index: int, name: str) -> None:
        await asyncio.sleep(spread * index / len(names))
        failed[name] = time.monotonic()
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pods_of(name)[1]}/status"
        await bench.call("PATCH", path, exited_status(137, reason="OOMKilled"))

    await asyncio.gather(*(fail(i, n) for i, n in enumerate(names)))
    await bench.until(lambda: all(p in bench.pod_seen for n in names for p in pods_of(n, 2)))
    return [max(bench.pod_seen[p] for p in pods_of(n, 2)) - failed[n] for n in names]


async def measure(
    milestones: tuple[int, ...], per_second: float, steady: float, restarts: int, burst: int, folder: Path,
    operator_tree: Path | None = None, progress: Any = print,
) -> dict[str, Any]:  # fmt: skip
    results: dict[str, Any] = {"milestones": [], "arrival_per_second": per_second, "baseline": bool(operator_tree)}
    async with Bench(folder, operator_tree) as bench:
        assert bench.operator is not None
        with Sampler(bench.operator.pid) as sampler:
            live = 0
            for target in milestones:
                names = [f"job-{index:04d}" for index in range(live, target)]
                before, began = bench.cpu(), time.monotonic()
                latencies = await _arrive(bench, names, per_second)
                mark = Milestone(target, per_second, launch_cpu=_rates(before, bench.cpu(), time.monotonic() - began))
                mark.create_to_pods_p50, mark.create_to_pods_p99 = (stats.percentile(latencies, q) for q in (50, 99))
                mark.create_to_pods_max = max(latencies)
                await _run_pods(bench, [p for n in names for p in pods_of(n)])
                await asyncio.sleep(min(steady, 10.0))  # the Running statuses written, the queue quiet
                before, wall, began = bench.cpu(), time.time(), time.monotonic()
                await asyncio.sleep(steady)
                elapsed = time.monotonic() - began
                mark.steady_seconds = round(elapsed, 1)
                mark.steady_cpu = _rates(before, bench.cpu(), elapsed)
                window = [e for e in bench.operator_requests(wall, wall + elapsed) if e.get("verb") != "watch"]
                mark.steady_requests_per_job_minute = round(len(window) / target / elapsed * 60, 3)
                kinds = collections.Counter(_kind(e) for e in window)
                mark.steady_requests_by_kind = {k: round(v / target / elapsed * 60, 3) for k, v in kinds.most_common()}
                chosen = [f"job-{index:04d}" for index in range(live, min(target, live + restarts))]
                restart_latencies = await _restarts(bench, chosen)
                mark.restart_p50, mark.restart_p99 = (stats.percentile(restart_latencies, q) for q in (50, 99))
                mark.restarts_measured = len(restart_latencies)
                mark.peak_rss_bytes = sampler.peak_rss
                results["milestones"].append(mark.__dict__)
                progress(
                    f"  {target:5d} live jobs: create->pods p50 {mark.create_to_pods_p50:.2f} s p99 "
                    f"{mark.create_to_pods_p99:.2f} s; {mark.steady_requests_per_job_minute:.2f} req/job/min; "
                    f"restart p50 {mark.restart_p50:.2f} s p99 {mark.restart_p99:.2f} s; RSS "
                    f"{mark.peak_rss_bytes / 2**20:.0f} MiB; steady CPU {mark.steady_cpu}"
                )
                live = target
            if burst:
                names = [f"burst-{index:04d}" for index in range(burst)]
                latencies = await _arrive(bench, names, 0.0)
                results["burst"] = {
                    "jobs": burst,
                    "on_top_of": live,
                    "create_to_pods_p50": stats.percentile(latencies, 50),
                    "create_to_pods_p99": stats.percentile(latencies, 99),
                    "create_to_pods_max": max(latencies),
                }
                progress(f"  burst of {burst}: create->pods p50 {results['burst']['create_to_pods_p50']:.2f} s "
                         f"p99 {results['burst']['create_to_pods_p99']:.2f} s")  # fmt: skip
            results["peak_rss_bytes"] = sampler.peak_rss
    return results
