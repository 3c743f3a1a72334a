"""The training profile's parts that make its numbers (bench.operator_training), on a tiny scale: one
progress server telling jobs apart by the address asked, steps that advance or freeze, and the memory of
cached pods measured in a fresh process. No timing is asserted."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from bench.operator_training import ProgressServer, address, cached_pod_memory
from kubetune.api.outcome import ProgressSnapshot

pytestmark = pytest.mark.timeout(60)


def test_every_job_and_worker_has_an_address_of_its_own() -> None:
    names = [f"job-{index:04d}" for index in range(1000)]
    addresses = {address(name, worker) for name in names for worker in (0, 1)}
    assert len(addresses) == 2000 and address("job-0251") == "127.20.1.2"


async def test_one_server_answers_each_job_by_the_address_asked() -> None:
    server = ProgressServer()
    await server.start()
    try:
        now = time.monotonic()
        server.started = {"127.20.0.1": now - 5.0, "127.20.0.2": now}
        async with aiohttp.ClientSession() as session:

            async def step(ip: str) -> int | None:
                async with session.get(f"http://{ip}:{server.port}/progress") as response:
                    if response.status != 200:
                        return None
                    return ProgressSnapshot.model_validate_json(await response.read()).progress.step

            assert await step("127.20.0.1") == 5 and await step("127.20.0.2") == 0
            assert await step("127.20.0.3") is None  # not a training job's address: 503
            server.frozen_at = now
            server.started["127.20.0.2"] = now - 100.0
            assert await step("127.20.0.2") == 100 and await step("127.20.0.2") == 100  # frozen: no change
        assert server.answered == 4
    finally:
        await server.stop()


def test_cached_pod_memory_is_measured_over_the_pods_given(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p", "namespace": "bench", "labels": {"kubetune.io/job-name": "j"}}, "spec": {}}
    pods = [{**pod, "metadata": {**pod["metadata"], "name": f"p{i}", "uid": str(i)}} for i in range(2000)]
    measured = cached_pod_memory(pods, tmp_path / "pods.json")
    assert measured["pods"] == 2000 and measured["mib_per_1000"] >= 0
