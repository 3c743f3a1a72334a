"""The operator at 100 to 1,000 jobs that train, and the peer beside it (issue 28, items 3 to 5).

Why: bench/operator_real.py measures jobs whose rank 0 never answers (no pod IP), which hides what a
training job costs: reading its progress and writing it to the status. Here every job's worker 0 gets an
address of its own on the loopback network (127.20.x.y) and one server of this process answers
`GET /progress` for all of them, telling the jobs apart by the address the request came to; each job's
step advances every second from the moment its pods are marked Running.

- training profile, at each number of live jobs (arrivals at 20 jobs/s): create -> all pods, a window of
  steady training (operator / API server / etcd CPU, the operator's requests per job per minute by kind
  from the audit log, and how stale the progress in the status is: sampled every 5 s by listing the
  jobs, staleness = now - the end of the step the status shows), then gang restarts of up to 100 jobs;
- at the last number: progress that stops changing (the server answers the same step) and then rank 0
  that cannot be reached (the server stops: connections refused), each measured after the reads have
  backed off: the steady CPU the issue's goal is about;
- resident memory per 1,000 cached pods: the pods as the API server serves them, decoded and stored the
  way the operator's informer does (kubetune.operator.store), in a fresh process.

The peer, Kubeflow training-operator (bench.peer), runs on a control plane of its own with the same
arrivals, as shipped and with the client limits equal to ours.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp.web
import psutil

from bench import peer as peer_module
from bench import stats
from bench.emulated import Sampler, pods_of, running_status, stop_operator
from bench.operator_real import NAMESPACE, Bench, _arrive, _kind, _rates, _restarts
from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.api.outcome import ProgressSnapshot
from kubetune.api.status import Metrics, Progress
from tests.support.ports import free_port

#: Seconds of each measured window, and of settling before the windows where reads back off: unchanged
#: progress is read every 60 s at most; unreachable rank 0 is first found at the next read (60 s), said in
#: the status 60 s later (ProgressUnavailable, a write and an Event per job), then read every 30 s.
WINDOW, BACKED_OFF_AFTER, UNREACHABLE_SETTLED_AFTER = 45.0, 75.0, 160.0


def address(job: str, worker: int = 0) -> str:
    index = int(job.rsplit("-", 1)[1])
    return f"127.{20 + worker}.{index // 250}.{index % 250 + 1}"


class ProgressServer:
    """`GET /progress` for every job's worker 0, told apart by the address asked; the step is the seconds
    since the job's pods were marked Running (frozen once `freeze()` is called)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        """Address -> monotonic time its pods were marked Running."""
        self.frozen_at: float | None = None
        self.port = free_port()
        self.answered = 0
        self._runner: aiohttp.web.AppRunner | None = None

    def step(self, ip: str, now: float) -> int:
        return int(min(now, self.frozen_at or now) - self.started[ip])

    async def _progress(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        ip = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        if ip not in self.started:
            return aiohttp.web.Response(status=503)
        step = self.step(ip, time.monotonic())
        snapshot = ProgressSnapshot(
            progress=Progress(step=step, total_steps=100_000, percent=step // 1000),
            metrics=Metrics(train_loss=round(3.0 - step / 10_000, 4), learning_rate=1e-4),
            updated_at=time.time(),
        )
        self.answered += 1
        return aiohttp.web.Response(body=snapshot.model_dump_json(by_alias=True), content_type="application/json")

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_get("/progress", self._progress)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, "0.0.0.0", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _train(bench: Bench, server: ProgressServer, names: list[str], attempt: int = 1) -> None:
    """Mark the jobs' pods Running, each with its address; their steps start now."""
    gate = asyncio.Semaphore(16)

    async def run(name: str, worker: int, pod: str) -> None:
        status = running_status()
        ip = address(name, worker)
        status["status"] |= {"podIP": ip, "podIPs": [{"ip": ip}]}
        async with gate:
            await bench.call("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/status", status)
        if worker == 0:
            server.started[ip] = time.monotonic()

    await asyncio.gather(*(run(n, w, p) for n in names for w, p in enumerate(pods_of(n, attempt))))


class StatusWatch:
    """The latest (phase, progress step) of every job, from a watch (a list of 1,000 jobs every 5 s would
    load the API server more than the operator does)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.latest: dict[str, tuple[str, int | None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        assert self.bench.session is not None
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}?watch=1&timeoutSeconds=3600"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.bench.session.get(self.bench.plane.url + path, timeout=timeout) as response:
                    async for line in response.content:
                        job = json.loads(line).get("object") or {}
                        name = (job.get("metadata") or {}).get("name", "")
                        if job.get("kind") != "FineTuneJob" or not name.startswith("job-"):
                            continue  # (a bookmark, an error, a burst job: not sampled)
                        status = job.get("status") or {}
                        self.latest[name] = (status.get("phase", ""), (status.get("progress") or {}).get("step"))


async def _staleness(watch: StatusWatch, server: ProgressServer, seconds: float) -> list[float]:
    """Every 5 s: for each training job, now - the end of the step its status shows (the time since its
    pods ran, while it shows none)."""
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        for name, (phase, step) in list(watch.latest.items()):
            began = server.started.get(address(name))
            if began is None or phase != "Running":
                continue
            samples.append(max(0.0, now - (began + step + 1)) if step is not None else now - began)
        await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - now)))
    return samples


async def _window(
    bench: Bench, jobs: int, seconds: float, server: ProgressServer | None = None, watch: StatusWatch | None = None
) -> dict[str, Any]:
    """CPU, requests per job per minute by kind and (with a server) staleness over `seconds`."""
    before, wall, began = bench.cpu(), time.time(), time.monotonic()
    samples: list[float] = []
    if server is not None and watch is not None:
        samples = await _staleness(watch, server, seconds)
    else:
        await asyncio.sleep(seconds)
    elapsed = time.monotonic() - began
    window = [e for e in bench.operator_requests(wall, wall + elapsed) if e.get("verb") != "watch"]
    kinds = collections.Counter(_kind(e) for e in window)
    figures: dict[str, Any] = {
        "seconds": round(elapsed, 1),
        "cpu": _rates(before, bench.cpu(), elapsed),
        "requests_per_job_minute": round(len(window) / jobs / elapsed * 60, 3),
        "requests_by_kind": {k: round(v / jobs / elapsed * 60, 3) for k, v in kinds.most_common()},
    }
    if samples:
        figures |= {"staleness_p50": stats.percentile(samples, 50), "staleness_p99": stats.percentile(samples, 99),
                    "staleness_samples": len(samples)}  # fmt: skip
    return figures


async def measure_training(
    milestones: tuple[int, ...], per_second: float, restarts: int, folder: Path, progress: Any = print
) -> dict[str, Any]:
    """The training profile (see the module's docstring)."""
    server = ProgressServer()
    await server.start()
    results: dict[str, Any] = {"milestones": [], "arrival_per_second": per_second, "create_to_pods": []}
    args = (f"--progress-port={server.port}",)
    try:
        async with Bench(folder, None, operator_args=args) as bench:
            assert bench.operator is not None
            watch = StatusWatch(bench)
            watch.start()
            with Sampler(bench.operator.pid) as sampler:
                live = 0
                for target in milestones:
                    names = [f"job-{index:04d}" for index in range(live, target)]
                    latencies = await _arrive(bench, names, per_second)
                    results["create_to_pods"] += latencies
                    await _train(bench, server, names)
                    await asyncio.sleep(20.0)  # the first reads and writes of the new jobs
                    mark: dict[str, Any] = {"jobs": target, "create_to_pods_p50": stats.percentile(latencies, 50),
                                            "create_to_pods_p99": stats.percentile(latencies, 99)}  # fmt: skip
                    mark["training"] = await _window(bench, target, WINDOW, server, watch)
                    chosen = [f"job-{index:04d}" for index in range(live, min(target, live + restarts))]
                    restarted = await _restarts(bench, chosen)
                    mark |= {"restart_p50": stats.percentile(restarted, 50),
                             "restart_p99": stats.percentile(restarted, 99), "restarts_measured": len(restarted)}  # fmt: skip
                    await _train(bench, server, chosen, attempt=2)  # the new gangs train too
                    mark["peak_rss_bytes"] = sampler.peak_rss
                    results["milestones"].append(mark)
                    progress(f"  training, {target} jobs: {json.dumps(mark)}")
                    live = target
                server.frozen_at = time.monotonic()
                await asyncio.sleep(BACKED_OFF_AFTER)
                results["unchanged"] = await _window(bench, live, WINDOW)
                progress(f"  progress unchanged, {live} jobs: {json.dumps(results['unchanged'])}")
                await server.stop()
                await asyncio.sleep(UNREACHABLE_SETTLED_AFTER)
                results["unreachable"] = await _window(bench, live, WINDOW)
                progress(f"  rank 0 unreachable, {live} jobs: {json.dumps(results['unreachable'])}")
                results["peak_rss_bytes"] = sampler.peak_rss
                pods = await bench.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")
                results["cached_pods"] = cached_pod_memory(pods["items"], folder / "pods.json")
            watch.stop()
    finally:
        await server.stop()
    latencies = results.pop("create_to_pods")
    results["create_to_pods_p50"], results["create_to_pods_p99"] = (stats.percentile(latencies, q) for q in (50, 99))
    return results


#: Run in a fresh process: resident memory added by decoding and storing the pods as the informer does.
_STORE_PODS = """
import json, sys, psutil
from kubetune.operator.store import Store
text = open(sys.argv[1]).read()
before = psutil.Process().memory_info().rss
store = Store("Pod")
for pod in json.loads(text):
    store.upsert(json.loads(json.dumps(pod)))
print(psutil.Process().memory_info().rss - before, len(store))
"""


def cached_pod_memory(pods: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """MiB of resident memory per 1,000 pods held in the operator's pod cache (kubetune.operator.store)."""
    path.write_text(json.dumps(pods))
    out = subprocess.run([sys.executable, "-c", _STORE_PODS, str(path)], capture_output=True, text=True, check=True)
    added, count = (int(x) for x in out.stdout.split())
    return {"pods": count, "mib_per_1000": round(added / 2**20 / count * 1000, 1) if count else 0.0}


async def measure_peer(
    jobs: int, per_second: float, qps: int | None, burst: int | None, folder: Path, progress: Any = print
) -> dict[str, Any]:
    """The peer on a control plane of its own: 1,000 PyTorchJobs (2 pods each) arriving at `per_second`."""
    binary = peer_module.build_peer()
    users = {peer_module.PEER_TOKEN: peer_module.PEER_USER}
    async with Bench(folder, None, users=users, pod_label=peer_module.JOB_LABEL) as bench:
        peer = await peer_module.start_peer(bench.plane, bench.call, folder, binary, qps, burst)
        try:
            namespace = "peer"
            await bench.call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace, "labels": {
                "pod-security.kubernetes.io/enforce": "baseline"}}})  # fmt: skip
            await asyncio.sleep(2.0)  # (its default ServiceAccount)
            with Sampler(peer.pid) as sampler:
                latencies = await _arrive_peer(bench, namespace, jobs, per_second)
                pods = [p for i in range(jobs) for p in peer_module.peer_pods_of(f"pt-{i:04d}")]
                gate = asyncio.Semaphore(16)

                async def run(pod: str) -> None:
                    async with gate:
                        await bench.call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod}/status", running_status())

                await asyncio.gather(*(run(p) for p in pods))
                await asyncio.sleep(20.0)
                steady = await _window_of(bench, peer.pid, jobs, WINDOW)
                rss = sampler.peak_rss
        finally:
            await stop_operator(peer)
    result = {"qps": qps, "burst": burst, "create_to_pods_p50": stats.percentile(latencies, 50),
              "create_to_pods_p99": stats.percentile(latencies, 99), "steady": steady, "peak_rss_bytes": rss}  # fmt: skip
    progress(f"  peer (qps {qps or 'as shipped'}): {json.dumps(result)}")
    return result


async def _arrive_peer(bench: Bench, namespace: str, jobs: int, per_second: float) -> list[float]:
    path = f"/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"
    created: dict[str, float] = {}
    began = time.monotonic()

    async def create(index: int) -> None:
        name = f"pt-{index:04d}"
        await asyncio.sleep(max(0.0, began + index / per_second - time.monotonic()))
        created[name] = time.monotonic()
        await bench.call("POST", path, peer_module.pytorchjob_manifest(name, namespace))

    await asyncio.gather(*(create(i) for i in range(jobs)))
    await bench.until(lambda: all(p in bench.pod_seen for n in created for p in peer_module.peer_pods_of(n)), 1800)
    return [max(bench.pod_seen[p] for p in peer_module.peer_pods_of(n)) - created[n] for n in created]


async def _window_of(bench: Bench, pid: int, jobs: int, seconds: float) -> dict[str, Any]:
    """The peer's CPU (cores) and requests per job per minute over `seconds`."""
    process = psutil.Process(pid)
    cpu = process.cpu_times()
    wall, began = time.time(), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - began
    after = process.cpu_times()
    window = [e for e in bench.operator_requests(wall, wall + elapsed) if e.get("verb") != "watch"]
    used = (after.user + after.system - cpu.user - cpu.system) / elapsed
    return {"cpu": round(used, 4), "requests_per_job_minute": round(len(window) / jobs / elapsed * 60, 3)}
