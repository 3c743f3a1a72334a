"""The progress poller: reads outside the reconcile, bounded in number, a reconcile asked for only when the
status has something to say, nothing kept from another attempt's pod."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from kubetune.api.outcome import ProgressSnapshot
from kubetune.api.status import Metrics, Progress
from kubetune.operator.progress import ProgressRead, ResultRead
from kubetune.operator.progress_poller import ProgressPoller
from kubetune.policies.progress_cadence import Cadence

FAST = Cadence(write_interval=0.02, unchanged_read_max=0.04, failing_read_max=0.02, unreachable_after=10.0)


def pod(uid: str, ip: str | None = "10.0.0.1", attempt: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": f"job-a{attempt}-w0", "labels": {"kubetune.io/attempt": str(attempt)}},
        "status": {"podIP": ip} if ip else {},
    }


def snapshot(step: int) -> ProgressSnapshot:
    return ProgressSnapshot(attempt=1, progress=Progress(step=step), metrics=Metrics(), updated_at=float(step))


class Source:
    """Answers each read with `answer(pod)`; can hold reads until released; counts reads in flight."""

    def __init__(self, answer: Callable[[Mapping[str, Any]], ProgressRead]) -> None:
        self.answer = answer
        self.reads: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def read(self, pod: Mapping[str, Any]) -> ProgressRead:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            self.reads.append(pod["metadata"]["uid"])
            return self.answer(pod)
        finally:
            self.in_flight -= 1

    async def result(self, pod: Mapping[str, Any]) -> ResultRead:
        return ResultRead()

    async def confirm(self, pod: Mapping[str, Any]) -> bool:
        return True


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "not there in time"
        await asyncio.sleep(0.005)


def recording(poller: ProgressPoller) -> list[tuple[Hashable, float]]:
    asked: list[tuple[Hashable, float]] = []
    poller.notify = lambda key, seconds: asked.append((key, seconds))
    return asked


async def test_progress_that_does_not_change_asks_for_one_reconcile_and_is_read_less_often() -> None:
    source = Source(lambda p: ProgressRead(snapshot(5), address="http://10.0.0.1:9400/progress"))
    poller = ProgressPoller(source, FAST, readers=4)
    asked = recording(poller)
    poller.track("job", pod("u1"))
    await until(lambda: len(source.reads) >= 5)
    await poller.stop()
    assert asked == [("job", 0.0)]  # the first snapshot only: the others said nothing new
    read, failing_since = poller.latest("job", pod("u1"))
    assert read is None and failing_since is None  # stopped: nothing tracked


async def test_progress_that_changes_asks_for_reconciles_no_closer_than_the_write_interval() -> None:
    steps = iter(range(1, 1000))
    source = Source(lambda p: ProgressRead(snapshot(next(steps)), address="http://10.0.0.1:9400/progress"))
    poller = ProgressPoller(source, FAST, readers=4)
    asked = recording(poller)
    poller.track("job", pod("u1"))
    await until(lambda: len(asked) >= 4)
    read, _ = poller.latest("job", pod("u1"))
    await poller.stop()
    assert read is not None and read.snapshot is not None and read.snapshot.progress.step >= 4
    assert asked[0] == ("job", 0.0) and all(seconds <= FAST.write_interval for _, seconds in asked)


async def test_a_pod_without_an_address_is_read_once_it_has_one() -> None:
    source = Source(lambda p: ProgressRead(snapshot(1), address="http://10.0.0.2:9400/progress"))
    poller = ProgressPoller(source, FAST, readers=4)
    asked = recording(poller)
    poller.track("job", pod("u1", ip=None))
    poller.track("other", pod("u2"))
    await until(lambda: "u2" in source.reads)
    assert "u1" not in source.reads  # (the pod with an address was scheduled after it, and is read)
    poller.track("job", pod("u1", ip="10.0.0.2"))
    await until(lambda: ("job", 0.0) in asked)
    await poller.stop()
    assert "u1" in source.reads


async def test_reads_in_flight_are_bounded_by_the_readers() -> None:
    source = Source(lambda p: ProgressRead(snapshot(1), address="http://x/progress"))
    source.gate.clear()
    poller = ProgressPoller(source, FAST, readers=3)
    for index in range(10):
        poller.track(f"job-{index}", pod(f"u{index}"))
    await until(lambda: source.in_flight == 3)
    source.gate.set()
    await until(lambda: len(set(source.reads)) == 10)
    await poller.stop()
    assert source.most_in_flight == 3


async def test_another_attempts_pod_starts_over_and_an_unreachable_one_backs_off() -> None:
    def answer(p: Mapping[str, Any]) -> ProgressRead:
        if p["metadata"]["uid"] == "u1":
            return ProgressRead(snapshot(7), address="http://10.0.0.1:9400/progress")
        return ProgressRead(address="http://10.0.0.9:9400/progress", error="connection refused")

    source = Source(answer)
    backing_off = Cadence(write_interval=0.02, unchanged_read_max=0.04, failing_read_max=0.3, unreachable_after=10.0)
    poller = ProgressPoller(source, backing_off, readers=4)
    asked = recording(poller)
    poller.track("job", pod("u1"))
    await until(lambda: poller.latest("job", pod("u1"))[0] is not None)
    poller.track("job", pod("u2", ip="10.0.0.9", attempt=2))  # the gang restarted
    assert poller.latest("job", pod("u2", attempt=2)) == (None, None)  # nothing of attempt 1 is shown for it
    await until(lambda: source.reads.count("u2") >= 2)
    read, failing_since = poller.latest("job", pod("u2", attempt=2))
    await poller.stop()
    assert read is not None and read.error == "connection refused" and failing_since is not None
    assert ("job", backing_off.unreachable_after) in asked  # the status hears of it once the bound has passed
    assert source.reads.count("u2") == 2  # backing off: the next read 0.3 s later, not every 20 ms


async def test_a_source_that_raises_is_reported_and_read_again() -> None:
    calls = iter([RuntimeError("boom")] + [None] * 100)

    def answer(p: Mapping[str, Any]) -> ProgressRead:
        if (error := next(calls)) is not None:
            raise error
        return ProgressRead(snapshot(1), address="http://x/progress")

    poller = ProgressPoller(Source(answer), Cadence(write_interval=0.02, failing_read_max=0.02), readers=1)
    asked = recording(poller)
    poller.track("job", pod("u1"))
    await until(
        lambda: ("job", 0.0) in asked and (poller.latest("job", pod("u1"))[0] or ProgressRead()).snapshot is not None
    )
    await poller.stop()
