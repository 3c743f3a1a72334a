"""The operator with 100 to 1,000 live jobs, against the emulated API server; no trainer runs.

The operator is the real `kubetune operator` command in its own process (default production settings:
a reconcile at least every 5 s per job), pointed at `tests.support.emulator.ApiServer` (kmock with the
real API server's semantics) served from this process. This process plays the users and the kubelet:
it creates the jobs, marks their pods Running, and later fails one pod of some jobs. Its own requests
carry the user agent `kubetune-bench`, so every other request is the operator's.

Measured per scale (each on a fresh server and operator):

- create -> all worker pods of the job exist: the emulator stamps every pod create;
- the operator process's peak RSS (psutil, sampled every 0.2 s) and CPU, per thread, so the busy
  thread can be named (the asyncio loop that runs kopf and every job's daemon, or the client threads);
- API requests: per job at steady state (per minute), and split by verb and resource;
- gang restarts: one pod of up to 100 jobs fails (exit 137, OOMKilled, retryable, no backoff); the
  latency is from the failure report (the pod status write) to the new attempt's last pod create;
- the emulator's own handling time per request, to tell a slow operator from a slow server.

One full lifecycle (create, run, succeed, delete) at the smallest scale counts requests per job.
"""

from __future__ import annotations

import asyncio
import collections
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import stats
from bench.emulated import Harness, Sampler, Served, exited_status, job_manifest, pods_of, running_status
from kubetune.api.outcome import TrainerResult


@dataclass
class Scale:
    """The figures of one scale."""

    jobs: int
    create_to_pods_p50: float = 0.0
    create_to_pods_p99: float = 0.0
    create_to_pods_max: float = 0.0
    all_pods_seconds: float = 0.0
    """From the first create to the last job's pods all existing."""
    peak_rss_bytes: int = 0
    steady_requests_per_job_minute: float = 0.0
    steady_requests_by_kind: dict[str, float] = field(default_factory=dict)
    """Per job per minute, by `action resource`."""
    steady_operator_cpu: float = 0.0
    """Operator CPU seconds per wall second at steady state (1.0 = one core)."""
    steady_busiest_thread_cpu: float = 0.0
    """The busiest operator thread's CPU seconds per wall second at steady state."""
    operator_threads: int = 0
    restart_p50: float = 0.0
    restart_p99: float = 0.0
    restarts_measured: int = 0
    burst_operator_cpu: float = 0.0
    """Operator CPU per wall second from the first create until all pods existed."""
    burst_busiest_thread_cpu: float = 0.0
    emulator_ms_per_request: dict[str, float] = field(default_factory=dict)
    """Mean emulator handling time of the operator's requests, by `action resource`, in ms."""
    bench_process_cpu: float = 0.0
    """CPU per wall second of this process (emulator + the fake users and kubelet) at steady state."""


def _kind(s: Served) -> str:
    return f"{s.action} {s.resource or '-'}"


def _cpu_rates(before: dict[int, float], after: dict[int, float], seconds: float) -> tuple[float, float]:
    """(whole process, busiest thread) CPU seconds per wall second between two samples."""
    deltas = [after[t] - before.get(t, 0.0) for t in after]
    return sum(deltas) / seconds, max(deltas, default=0.0) / seconds


async def _launch(harness: Harness, names: list[str], result: Scale, sampler: Sampler) -> None:
    """Create every job; wait until all their pods exist; the create -> pods latencies."""
    created: dict[str, float] = {}
    cpu_before, began = sampler.cpu(), time.monotonic()

    async def create(name: str) -> None:
        await harness.call("POST", harness.jobs_path(), job_manifest(name))
        created[name] = time.monotonic()

    gate = asyncio.Semaphore(16)

    async def gated(name: str) -> None:
        async with gate:
            await create(name)

    await asyncio.gather(*(gated(n) for n in names))
    pods = harness.server.pod_created
    await harness._wait(lambda: all(p in pods for n in names for p in pods_of(n)), timeout=600)
    latencies = [max(pods[p] for p in pods_of(n)) - created[n] for n in names]
    elapsed = time.monotonic() - began
    result.create_to_pods_p50 = stats.percentile(latencies, 50)
    result.create_to_pods_p99 = stats.percentile(latencies, 99)
    result.create_to_pods_max = max(latencies)
    result.all_pods_seconds = max(pods[p] for n in names for p in pods_of(n)) - began
    result.burst_operator_cpu, result.burst_busiest_thread_cpu = _cpu_rates(cpu_before, sampler.cpu(), elapsed)


async def _run_pods(harness: Harness, names: list[str]) -> None:
    await harness.each(("PATCH", harness.pod_status_path(p), running_status()) for n in names for p in pods_of(n))
    await harness._wait(lambda: all(harness.phase(n) == "Running" for n in names), timeout=600)


async def _steady(harness: Harness, jobs: int, seconds: float, result: Scale, sampler: Sampler) -> None:
    """Requests, CPU and threads while every job is Running and nothing changes."""
    bench = psutil.Process()
    start_index, cpu_before, bench_before = len(harness.served), sampler.cpu(), bench.cpu_times()
    began = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - began
    window = [s for s in harness.served[start_index:] if not s.ours and s.action != "WATCH"]
    result.steady_requests_per_job_minute = len(window) / jobs / elapsed * 60
    kinds = collections.Counter(_kind(s) for s in window)
    result.steady_requests_by_kind = {k: round(v / jobs / elapsed * 60, 2) for k, v in kinds.most_common()}
    result.steady_operator_cpu, result.steady_busiest_thread_cpu = _cpu_rates(cpu_before, sampler.cpu(), elapsed)
    result.operator_threads = len(sampler.cpu())
    bench_after = bench.cpu_times()
    result.bench_process_cpu = (
        bench_after.user + bench_after.system - bench_before.user - bench_before.system
    ) / elapsed
    timings: dict[str, list[float]] = collections.defaultdict(list)
    for s in window:
        timings[_kind(s)].append(s.seconds)
    result.emulator_ms_per_request = {k: round(1000 * sum(v) / len(v), 2) for k, v in sorted(timings.items())}


async def _restarts(harness: Harness, names: list[str], result: Scale, spread: float = 5.0) -> None:
    """Fail one pod of each job in `names`, spread over `spread` seconds; failure -> new gang latency."""
    failed: dict[str, float] = {}

    async def fail(index: int, name: str) -> None:
        await asyncio.sleep(spread * index / len(names))
        failed[name] = time.monotonic()
        await harness.call("PATCH", harness.pod_status_path(pods_of(name)[1]), exited_status(137, reason="OOMKilled"))

    await asyncio.gather(*(fail(i, n) for i, n in enumerate(names)))
    pods = harness.server.pod_created
    await harness._wait(lambda: all(p in pods for n in names for p in pods_of(n, 2)), timeout=600)
    latencies = [max(pods[p] for p in pods_of(n, 2)) - failed[n] for n in names]
    result.restart_p50 = stats.percentile(latencies, 50)
    result.restart_p99 = stats.percentile(latencies, 99)
    result.restarts_measured = len(latencies)


async def measure_scale(jobs: int, folder: Path, steady_seconds: float, restarts: int) -> Scale:
    result = Scale(jobs=jobs)
    folder.mkdir(parents=True, exist_ok=True)
    async with Harness(folder) as harness:
        assert harness.operator is not None
        with Sampler(harness.operator.pid) as sampler:
            names = [f"job-{index:04d}" for index in range(jobs)]
            await _launch(harness, names, result, sampler)
            await _run_pods(harness, names)
            await _steady(harness, jobs, steady_seconds, result, sampler)
            await _restarts(harness, names[:restarts], result)
            result.peak_rss_bytes = sampler.peak_rss
    return result


async def measure_lifecycle(jobs: int, folder: Path, running_seconds: float) -> dict[str, Any]:
    """Requests per job over one whole life: create, run `running_seconds`, succeed, delete."""
    folder.mkdir(parents=True, exist_ok=True)
    async with Harness(folder) as harness:
        names = [f"life-{index:03d}" for index in range(jobs)]
        began = time.monotonic()
        await harness.each(("POST", harness.jobs_path(), job_manifest(n)) for n in names)
        pods = harness.server.pod_created
        await harness._wait(lambda: all(p in pods for n in names for p in pods_of(n)))
        await _run_pods(harness, names)
        await asyncio.sleep(running_seconds)
        done = TrainerResult(outcome="Succeeded", reason="Succeeded", message="trained", retryable=False)
        message = done.termination_message()
        await harness.each(
            ("PATCH", harness.pod_status_path(p), exited_status(0, message if p.endswith("w0") else ""))
            for n in names
            for p in pods_of(n)
        )
        await harness._wait(lambda: all(harness.phase(n) == "Succeeded" for n in names))
        await harness.each(("DELETE", harness.jobs_path(n), None) for n in names)
        await harness._wait(lambda: not any(harness.exists(n) for n in names))
        elapsed = time.monotonic() - began
        mine = [s for s in harness.served if not s.ours and s.job in set(names)]
        shared = [s for s in harness.served if not s.ours and s.job is None]
    kinds = collections.Counter(_kind(s) for s in mine)
    return {
        "jobs": jobs,
        "lifecycle_seconds": round(elapsed, 1),
        "running_seconds": running_seconds,
        "requests_per_job": len(mine) / jobs,
        "by_kind": {k: round(v / jobs, 2) for k, v in kinds.most_common()},
        "shared_requests": len(shared),
        "shared_by_kind": dict(collections.Counter(_kind(s) for s in shared).most_common()),
    }


def run(
    scales: tuple[int, ...], steady_seconds: float, restarts: int, lifecycle_jobs: int, progress: Any = print
) -> dict[str, Any]:
    """Every scale on a fresh server and operator, then one lifecycle count."""
    results: dict[str, Any] = {"scales": []}
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-operator-") as tmp:
        for jobs in scales:
            began = time.monotonic()
            scale = asyncio.run(measure_scale(jobs, Path(tmp) / f"scale-{jobs}", steady_seconds, min(restarts, jobs)))
            progress(
                f"  {jobs:5d} jobs: create->pods p50 {scale.create_to_pods_p50:.2f} s p99 {scale.create_to_pods_p99:.2f} s, "
                f"RSS {scale.peak_rss_bytes / 2**20:.0f} MiB, {scale.steady_requests_per_job_minute:.1f} req/job/min, "
                f"restart p50 {scale.restart_p50:.2f} s p99 {scale.restart_p99:.2f} s ({time.monotonic() - began:.0f} s)"
            )
            results["scales"].append(scale.__dict__)
        results["lifecycle"] = asyncio.run(measure_lifecycle(lifecycle_jobs, Path(tmp) / "lifecycle", 20.0))
        progress(f"  lifecycle: {results['lifecycle']['requests_per_job']:.1f} requests per job")
    return results
