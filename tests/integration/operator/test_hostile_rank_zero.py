"""What the operator reads from a rank 0 that does not play by the protocol stays bounded in bytes and time.

Rank 0 runs an image the job's author chose. A server here poses as one: it streams an endless body,
declares one larger than the cap, answers junk, trickles a byte at a time, or accepts the connection
and never answers. Each read must end (the request's timeout; the test's own timeout bounds it), keep at most the cap, and say what
was refused (kubetune.operator.progress), so that the job's status can name it.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest

from kubetune.api.status import FineTuneJobStatus
from kubetune.operator.progress import HttpProgressSource, ReadLimits
from kubetune.operator.progress_poller import ProgressPoller
from kubetune.operator.rank_zero import RankZeroWatch
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.progress_cadence import Cadence
from tests.support.memory import PeakMemory
from tests.support.ports import free_port
from tests.support.waiting import eventually_async

HOSTILE = Path(__file__).resolve().parents[2] / "support" / "hostile_image" / "hostile_rank_zero.py"

pytestmark = pytest.mark.timeout(60)

POD: dict[str, Any] = {"metadata": {"uid": "u1", "name": "demo-a1-w0"}, "status": {"podIP": "127.0.0.1"}}
KEY = ("default", "demo")
LIMITS = ReadLimits(progress_bytes=64 * 1024, result_bytes=256 * 1024)
TIMEOUT = 1.5
CHUNK = b"x" * (1024 * 1024)
Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]


async def endless(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
    response = aiohttp.web.StreamResponse()
    await response.prepare(request)
    while True:  # as fast as the socket takes it, until the client hangs up
        await response.write(CHUNK)


async def declared_huge(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
    response = aiohttp.web.StreamResponse(headers={"Content-Length": str(10**12)})
    await response.prepare(request)
    while True:
        await response.write(CHUNK)


async def junk(request: aiohttp.web.Request) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=b'{"hello": "not a snapshot"}', content_type="application/json")


async def trickle(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
    response = aiohttp.web.StreamResponse()
    await response.prepare(request)
    while True:
        await response.write(b"{")
        await asyncio.sleep(0.1)


async def result_ready(request: aiohttp.web.Request) -> aiohttp.web.Response:
    snapshot = (
        '{"attempt": 1, "progress": {"step": 1, "totalSteps": 2}, "metrics": {}, "updatedAt": 1.0, "phase":'
        ' "Finished", "resultReady": true}'
    )
    return aiohttp.web.Response(body=snapshot.encode(), content_type="application/json")


async def serving(progress: Handler, result: Handler = junk) -> AsyncIterator[int]:
    app = aiohttp.web.Application()
    app.router.add_get("/progress", progress)
    app.router.add_get("/result", result)
    runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield port
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (endless, "GET /progress answered with more than 65536 bytes"),
        (declared_huge, "GET /progress answered with more than 65536 bytes"),
        (junk, "GET /progress answered 200 with a body that is not a snapshot"),
    ],
    ids=["endless", "declared-huge", "junk"],
)
async def test_an_answer_over_the_cap_or_off_the_protocol_is_refused_and_named(handler: Handler, said: str) -> None:
    async for port in serving(handler):
        read = await HttpProgressSource(port, TIMEOUT, LIMITS).read(POD)
        assert read.snapshot is None and read.error is None
        assert read.refused is not None and said in read.refused


async def test_a_trickling_rank_0_holds_a_read_no_longer_than_its_timeout() -> None:
    async for port in serving(trickle):
        read = await HttpProgressSource(port, TIMEOUT, LIMITS).read(POD)
        assert read.error == f"timed out after {TIMEOUT:g}s"


async def test_a_rank_0_that_never_answers_holds_a_read_no_longer_than_its_timeout() -> None:
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda _, writer: held.append(writer), "127.0.0.1", 0)  # never answers
    port = silent.sockets[0].getsockname()[1]
    try:
        read = await HttpProgressSource(port, TIMEOUT, LIMITS).read(POD)
        assert read.error == f"timed out after {TIMEOUT:g}s"
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_an_endless_result_is_refused_and_said_in_the_reach() -> None:
    async for port in serving(result_ready, endless):
        source = HttpProgressSource(port, TIMEOUT, LIMITS)
        watch = RankZeroWatch(source, ProgressPoller(source, Cadence(), readers=1))
        status, workers = FineTuneJobStatus(phase="Running", attempt=1), [WorkerObservation(0, 1, "running")]
        await watch.look(KEY, status, [POD], workers)  # rank 0 is read from now on, outside the reconcile
        await eventually_async(lambda w=watch: w.poller.reads >= 1, message="rank 0 read by the poller")
        view = await watch.look(KEY, status, [POD], workers)
        await watch.poller.stop()
        assert view.result is None and view.reach is not None
        assert "GET /result answered with more than 262144 bytes" in view.reach.refused


async def test_many_hostile_reads_at_once_keep_the_operator_small() -> None:
    """64 reads at once (the operator's reconcile workers) from the hostile image's rank 0, in a process of
    its own (endless bodies, junk, answers that never come, in turn): each is refused or times out, and
    this process's resident memory (sampled every 10 ms) grows by far less than unbounded reads take (the
    issue measured 2.4 GiB within a minute)."""
    port = free_port()
    hostile = subprocess.Popen([sys.executable, str(HOSTILE), "--metrics-port", str(port)], stdout=subprocess.PIPE)
    try:
        assert hostile.stdout is not None and b"serving" in hostile.stdout.readline()
        source = HttpProgressSource(port, TIMEOUT, ReadLimits())
        memory = PeakMemory()
        for _ in range(3):
            reads = await asyncio.gather(*(source.read(POD) for _ in range(64)))
            assert all(r.refused or r.error for r in reads) and any(r.refused for r in reads)
            assert {r.refused for r in reads if r.refused} <= {
                "GET /progress answered with more than 65536 bytes (the operator reads at most 65536)",
                "GET /progress answered 200 with a body that is not a snapshot",
            }
        grown_mib = memory.stop()
        assert grown_mib < 128, f"resident memory grew by {grown_mib:.0f} MiB"
    finally:
        hostile.kill()
        hostile.wait()
        if hostile.stdout is not None:
            hostile.stdout.close()


async def gzip_bomb(request: aiohttp.web.Request) -> aiohttp.web.Response:
    body = gzip.compress(b"x" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB inflated, about 64 KiB sent
    return aiohttp.web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def test_a_compressed_body_is_not_inflated() -> None:
    async for port in serving(gzip_bomb):
        read = await HttpProgressSource(port, 5.0, LIMITS).read(POD)
        assert read.refused is not None and "not a snapshot" in read.refused  # read as sent, never inflated


async def test_a_rank_0_that_keeps_answering_badly_is_read_less_and_less_often() -> None:
    """Each bad read doubles the pause before the next (2, 4, ... 30 s: kubetune.policies.progress_cadence,
    table-tested), so many hostile pods cannot keep the readers busy: here the third read comes no sooner
    than 2 + 4 s after the first."""
    async for port in serving(junk):
        source = HttpProgressSource(port, TIMEOUT, LIMITS)
        poller = ProgressPoller(source, Cadence(), readers=1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        poller.track(KEY, POD)
        await eventually_async(lambda p=poller: p.reads >= 3, timeout=15.0, message="three reads of rank 0")
        elapsed = loop.time() - began
        read, _ = poller.latest(KEY, POD)
        await poller.stop()
        assert read is not None and read.refused == "GET /progress answered 200 with a body that is not a snapshot"
        assert 6.0 <= elapsed < 10.0, elapsed
