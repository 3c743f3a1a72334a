"""The work queue: a burst is one reconcile, one reconcile per job at a time, bounded concurrency,
requeue after a delay, failures retried with a growing delay."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from kubetune.operator.workqueue import WorkQueue


class Recorder:
    """A handler that records calls and can be held until released."""

    def __init__(self, again: float | None = None, fail: int = 0) -> None:
        self.calls: list[Hashable] = []
        self.running: set[Hashable] = set()
        self.most_at_once = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.again = again
        self.fail = fail
        self.done = asyncio.Event()

    async def __call__(self, key: Hashable) -> float | None:
        assert key not in self.running, "a key was reconciled twice at once"
        self.running.add(key)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            self.calls.append(key)
            await self.gate.wait()
            if self.fail:
                self.fail -= 1
                raise RuntimeError("boom")
            return self.again
        finally:
            self.running.discard(key)
            self.done.set()


async def settle(queue: WorkQueue) -> None:
    """Until no key waits and no reconcile runs."""
    for _ in range(200):
        await asyncio.sleep(0)
        if queue.depth() == 0 and not queue._active:
            return


async def test_a_burst_of_adds_is_one_reconcile() -> None:
    handler = Recorder()
    queue = WorkQueue(handler, workers=4, error_backoff=(0.01, 0.1))
    for _ in range(50):
        queue.add("job")
    queue.start()
    await settle(queue)
    await queue.stop(1.0)
    assert handler.calls == ["job"]


async def test_an_add_during_a_reconcile_runs_it_once_more_afterwards() -> None:
    handler = Recorder()
    handler.gate.clear()
    queue = WorkQueue(handler, workers=4, error_backoff=(0.01, 0.1))
    queue.start()
    queue.add("job")
    while not handler.running:
        await asyncio.sleep(0)
    for _ in range(5):
        queue.add("job")  # while it runs: not a second concurrent reconcile
    handler.gate.set()
    await settle(queue)
    await queue.stop(1.0)
    assert handler.calls == ["job", "job"]


async def test_concurrency_is_bounded_by_workers() -> None:
    handler = Recorder()
    handler.gate.clear()
    queue = WorkQueue(handler, workers=3, error_backoff=(0.01, 0.1))
    queue.start()
    for n in range(10):
        queue.add(n)
    while len(handler.running) < 3:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert handler.most_at_once == 3 and queue.depth() == 7
    handler.gate.set()
    await settle(queue)
    await queue.stop(1.0)
    assert sorted(handler.calls) == list(range(10))  # type: ignore[type-var]


async def test_requeue_after_the_delay_the_handler_asks_for() -> None:
    handler = Recorder(again=0.05)
    queue = WorkQueue(handler, workers=1, error_backoff=(0.01, 0.1))
    queue.start()
    queue.add("job")
    while len(handler.calls) < 3:
        handler.done.clear()
        await asyncio.wait_for(handler.done.wait(), 2.0)
    await queue.stop(1.0)
    assert handler.calls == ["job"] * len(handler.calls)


async def test_the_earlier_timer_wins() -> None:
    handler = Recorder()
    queue = WorkQueue(handler, workers=1, error_backoff=(0.01, 0.1))
    queue.start()
    queue.add_after("job", 30.0)
    queue.add_after("job", 0.01)
    queue.add_after("job", 20.0)
    await asyncio.wait_for(handler.done.wait(), 2.0)
    await queue.stop(1.0)
    assert handler.calls == ["job"]


async def test_a_failure_is_retried_with_backoff() -> None:
    handler = Recorder(fail=2)
    queue = WorkQueue(handler, workers=1, error_backoff=(0.01, 0.05))
    queue.start()
    queue.add("job")
    while len(handler.calls) < 3:
        handler.done.clear()
        await asyncio.wait_for(handler.done.wait(), 2.0)
    await settle(queue)
    await queue.stop(1.0)
    assert handler.calls == ["job"] * 3 and not queue._failures


async def test_forget_cancels_the_timer() -> None:
    handler = Recorder()
    queue = WorkQueue(handler, workers=1, error_backoff=(0.01, 0.1))
    queue.start()
    queue.add_after("job", 0.02)
    queue.forget("job")
    await asyncio.sleep(0.1)
    await queue.stop(1.0)
    assert handler.calls == []


async def test_low_priority_keys_wait_until_no_other_key_does() -> None:
    handler = Recorder()
    queue = WorkQueue(handler, workers=1, error_backoff=(0.01, 0.1))
    for index in range(3):
        queue.add(f"progress-{index}", low=True)
    queue.add("restart")
    queue.add("progress-1")  # added normally meanwhile: it moves up
    queue.add("progress-2", low=True)  # (already waiting: nothing changes)
    queue.start()
    await settle(queue)
    await queue.stop(1.0)
    assert handler.calls == ["restart", "progress-1", "progress-0", "progress-2"]


async def test_a_low_priority_add_during_a_reconcile_stays_low() -> None:
    handler = Recorder()
    handler.gate.clear()
    queue = WorkQueue(handler, workers=1, error_backoff=(0.01, 0.1))
    queue.add("a")
    queue.start()
    while handler.calls != ["a"]:
        await asyncio.sleep(0)
    queue.add("a", low=True)
    queue.add("b")
    handler.gate.set()
    await settle(queue)
    await queue.stop(1.0)
    assert handler.calls == ["a", "b", "a"]


async def test_low_priority_reconciles_leave_most_workers_to_the_others() -> None:
    handler = Recorder()
    handler.gate.clear()
    queue = WorkQueue(handler, workers=4, error_backoff=(0.01, 0.1))
    for index in range(3):
        queue.add(f"progress-{index}", low=True)
    queue.start()
    while len(handler.calls) < 1:
        await asyncio.sleep(0)
    queue.add("restart")
    while "restart" not in handler.calls:
        await asyncio.sleep(0)
    assert handler.calls == ["progress-0", "restart"]  # one low-priority reconcile at a time (4 workers // 4)
    handler.gate.set()
    await settle(queue)
    await queue.stop(1.0)
    assert sorted(map(str, handler.calls)) == ["progress-0", "progress-1", "progress-2", "restart"]
    assert handler.most_at_once == 2
