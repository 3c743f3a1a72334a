"""The whole result travels from the trainer's endpoint to the operator intact, however large.

The trainer's own server and Recorder (kubetune.trainer) on one side, the operator's HTTP client
(kubetune.operator.progress) and gatherer (kubetune.operator.rank_zero) on the other, with the largest
result the API allows (tests/support/results.py): about 21 kB, five times the termination message's cap.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kubetune.api.invocation import RANK0_TOKEN_ENV
from kubetune.api.outcome import TERMINATION_MESSAGE_LIMIT, TrainerResult
from kubetune.api.status import FineTuneJobStatus
from kubetune.operator.progress import HttpProgressSource, RankZero
from kubetune.operator.progress_poller import ProgressPoller
from kubetune.operator.rank_zero import RankZeroView, RankZeroWatch
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.progress_cadence import Cadence
from kubetune.trainer.handover import ResultHandover
from kubetune.trainer.metrics import Guard, serve
from kubetune.trainer.outputs import Recorder
from kubetune.trainer.state import StopRequest
from tests.support.ports import free_port
from tests.support.results import largest_result

pytestmark = pytest.mark.timeout(30)

POD: dict[str, Any] = {"metadata": {"uid": "u1", "name": "demo-a1-w0"}, "status": {"podIP": "127.0.0.1"}}
KEY = ("default", "demo")


def watch_of(source: RankZero, clock: Any = None) -> RankZeroWatch:
    cadence = Cadence(write_interval=0.05, failing_read_max=0.05)
    return RankZeroWatch(source, ProgressPoller(source, cadence, readers=2, **({"clock": clock} if clock else {})))


async def look_once_read(
    watch: RankZeroWatch, status: FineTuneJobStatus, pods: list[dict[str, Any]], reads: int = 1
) -> RankZeroView:
    """The view once the poller has read rank 0 `reads` more times (the first look starts the reading)."""
    before = watch.poller.reads
    await watch.look(KEY, status, pods, [WorkerObservation(0, 1, "running")])
    for _ in range(400):
        if watch.poller.reads >= before + reads:
            break
        await asyncio.sleep(0.025)
    return await watch.look(KEY, status, pods, [WorkerObservation(0, 1, "running")])


async def test_the_largest_result_reaches_the_operator_whole_and_rank_0_is_released(tmp_path: Path) -> None:
    whole = largest_result().model_copy(update={"output_path": str(tmp_path / "output")})
    assert len(whole.wire().encode()) > 4 * TERMINATION_MESSAGE_LIMIT
    port, handover, recorder = free_port(), ResultHandover(), Recorder(tmp_path / "work", enabled=True)
    server = serve(port, CollectorRegistry(), recorder.progress_json, handover)
    try:
        termination = tmp_path / "termination-log"
        recorder.finish(whole, str(termination), handover=handover)
        stop, taken = StopRequest(), threading.Event()
        waiter = threading.Thread(target=lambda: handover.wait(20, stop) and taken.set())
        waiter.start()

        watch = watch_of(HttpProgressSource(port, timeout=5.0))
        status = FineTuneJobStatus(phase="Running", attempt=1)
        view = await look_once_read(watch, status, [POD])
        assert view.snapshot is not None and view.snapshot.result_ready and view.reach is not None
        assert view.reach.reachable and view.result == whole  # every field, every character
        assert view.workers([WorkerObservation(0, 1, "running")], 1)[0].result == whole

        # still Running: not used yet, nothing sent (a DELETE would have been answered before this returns)
        assert not await watch.confirm(view, status) and not handover.taken
        succeeded = status.model_copy(update={"phase": "Succeeded"})
        assert not await watch.confirm(view, succeeded)  # acknowledged: nothing owed
        await asyncio.to_thread(waiter.join, 5)
        assert taken.is_set()
        # while its pods end, the finished job's gang is still seen as ended with that result (not removed)
        ending = await watch.look(KEY, succeeded, [POD], [WorkerObservation(0, 1, "running")])
        assert ending.result == whole and ending.reach is None
        assert [w.state for w in ending.workers([WorkerObservation(1, 1, "running")], 1)] == ["succeeded"]
    finally:
        server.shutdown()
        server.server_close()
    # what lasts: the whole result.json beside the export; the termination message fits and points to it
    assert TrainerResult.model_validate_json((tmp_path / "output" / "result.json").read_text()) == whole
    short = TrainerResult.model_validate_json(termination.read_text())
    assert len(termination.read_bytes()) <= TERMINATION_MESSAGE_LIMIT
    assert short.result_file == str(tmp_path / "output" / "result.json")
    assert json.loads((tmp_path / "work" / "progress.json").read_text())["resultReady"] is True


async def test_an_unreachable_rank_0_is_reported_with_how_long(tmp_path: Path) -> None:
    now = [100.0]
    watch = watch_of(HttpProgressSource(free_port(), timeout=1.0), clock=lambda: now[0])
    status = FineTuneJobStatus(phase="Running", attempt=1)
    first = await look_once_read(watch, status, [POD])  # read (refused) at 100
    now[0] = 130.0
    later = await watch.look(KEY, status, [POD], [WorkerObservation(0, 1, "running")])
    await watch.poller.stop()
    assert first.reach is not None and not first.reach.reachable and first.reach.failing_for == 0
    assert later.reach is not None and later.reach.failing_for == 30 and later.reach.error
    assert "127.0.0.1" in later.reach.address and later.result is None


async def test_a_confirmation_that_does_not_reach_rank_0_is_still_owed() -> None:
    watch = watch_of(HttpProgressSource(free_port(), timeout=1.0))  # nothing listens there
    whole = largest_result()
    view = RankZeroView(result=whole, pod=POD)
    succeeded = FineTuneJobStatus(phase="Succeeded", attempt=1)
    assert await watch.confirm(view, succeeded)
    assert not await watch.confirm(view, FineTuneJobStatus(phase="Running", attempt=1))  # not used yet
    # owed: the next look hands it back to be told again, without reading rank 0 (it may still be unreachable)
    again = await watch.look(KEY, succeeded, [POD], [WorkerObservation(0, 1, "running")])
    assert again.result == whole and again.pod is POD
    # once worker 0 has ended (its handover time ran out) nothing is owed any more
    assert (await watch.look(KEY, succeeded, [POD], [WorkerObservation(0, 1, "succeeded")])).result is None
    assert (await watch.look(KEY, succeeded, [POD], [WorkerObservation(0, 1, "running")])).result is None


async def test_with_the_attempts_token_only_the_operator_takes_the_result(tmp_path: Path) -> None:
    """Rank 0 requires the token its pod's spec carries: a peer without it is refused (401) and cannot take
    the result away; the operator, which reads the token from the pod, still reads the whole result."""
    whole = largest_result()
    port, handover, recorder = free_port(), ResultHandover(), Recorder(tmp_path / "work", enabled=True)
    server = serve(port, CollectorRegistry(), recorder.progress_json, handover, Guard(token="attempt-1-token"))
    pod = {
        **POD,
        "spec": {"containers": [{"name": "trainer", "env": [{"name": RANK0_TOKEN_ENV, "value": "attempt-1-token"}]}]},
    }
    try:
        recorder.finish(whole, str(tmp_path / "termination-log"), handover=handover)
        stranger = HttpProgressSource(port, timeout=5.0)  # reaches the pod, but knows no token
        assert not await stranger.confirm(POD)
        assert (await stranger.result(POD)).result is None and (await stranger.read(POD)).snapshot is None
        assert not handover.taken
        watch = watch_of(HttpProgressSource(port, timeout=5.0))
        status = FineTuneJobStatus(phase="Running", attempt=1)
        view = await look_once_read(watch, status, [pod])
        assert view.result == whole
        assert not await watch.confirm(view, status.model_copy(update={"phase": "Succeeded"}))
        assert handover.taken
    finally:
        server.shutdown()
        server.server_close()
