"""The reconcile work queue: bounded concurrency, one reconcile per job at a time, bursts merged.

Why: with a watch cache, every pod, Service, ConfigMap or job event asks for its job to be reconciled.
A gang of 8 starting produces dozens of events in a second; reconciling on each would redo the same
work, and 1,000 jobs each running their own loop would all run at once. The queue keeps, like
client-go's workqueue:

- a job is queued at most once: adding a queued job does nothing (a burst of events is one reconcile);
- a job is reconciled by one worker at a time: one added while it is being reconciled is queued again
  when that reconcile ends;
- `workers` reconciles run at once, at most;
- a reconcile may ask to run again after a delay (deadlines, progress polls): the earliest wins;
- a failed reconcile is retried after a per-job delay that doubles, up to a bound;
- two lanes: a key added with `low=True` (a job whose rank 0 has new progress to write) is taken only
  when no other key waits, so creates and restarts never queue behind a thousand progress writes; adding
  it normally meanwhile moves it to the normal lane.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Hashable

logger = logging.getLogger(__name__)

#: Runs one reconcile of a key; returns seconds until it should run again, or None (only on events).
Handler = Callable[[Hashable], Awaitable[float | None]]


class WorkQueue:
    """Keys (jobs) waiting to be reconciled, and the workers that reconcile them."""

    def __init__(self, handler: Handler, workers: int, error_backoff: tuple[float, float]) -> None:
        self.handler = handler
        self.workers = workers
        self.low_at_once = max(1, workers // 4)
        """Low-priority reconciles running at once, at most: the rest of the workers stay free for the others
        (a progress write may wait for other writes to pass: kubetune.operator.kube)."""
        self._active_low = 0
        self.error_backoff = error_backoff
        self._ready: collections.deque[Hashable] = collections.deque()
        self._low: collections.deque[Hashable] = collections.deque()
        self._queued: dict[Hashable, bool] = {}
        """Keys waiting, with whether they wait in the low lane (a key moved to the normal lane is skipped
        when its stale place in the low lane comes up)."""
        self._active: set[Hashable] = set()
        self._again: dict[Hashable, bool] = {}
        self._timers: dict[Hashable, tuple[float, asyncio.TimerHandle, bool]] = {}
        self._failures: dict[Hashable, int] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: Hashable, low: bool = False) -> None:
        """Reconcile `key` as soon as a worker is free (once, however often it is added meanwhile); a `low`
        key only when no other waits."""
        if key in self._active:
            self._again[key] = self._again.get(key, True) and low
        elif key not in self._queued:
            self._queued[key] = low
            (self._low if low else self._ready).append(key)
            self._wake.set()
        elif self._queued[key] and not low:  # promoted: its place in the low lane is skipped
            self._queued[key] = False
            self._ready.append(key)
            self._wake.set()

    def add_after(self, key: Hashable, seconds: float, low: bool = False) -> None:
        """Reconcile `key` in `seconds` (an earlier timer for it stands; a normal one wins a tie)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(seconds, 0.0)
        timer = self._timers.get(key)
        if timer is not None:
            if timer[0] < due or (timer[0] == due and not timer[2]) or (timer[0] == due and low):
                return
            timer[1].cancel()
        self._timers[key] = (due, loop.call_at(due, self._fire, key, low), low)

    def forget(self, key: Hashable) -> None:
        """Drop the timer and failure count of a key (its job is gone)."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        self._failures.pop(key, None)

    def _fire(self, key: Hashable, low: bool) -> None:
        self._timers.pop(key, None)
        self.add(key, low)

    def depth(self) -> int:
        """Keys waiting for a worker."""
        return len(self._queued)

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name=f"reconcile worker {n}") for n in range(self.workers)]

    async def stop(self, timeout: float) -> None:
        """Cancel the workers and every timer; wait at most `timeout` seconds for running reconciles."""
        for _, handle, _low in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def _next(self) -> tuple[Hashable, bool]:
        while True:
            while not self._ready and not (self._low and self._active_low < self.low_at_once):
                self._wake.clear()
                await self._wake.wait()
            low = not self._ready
            key = (self._ready if not low else self._low).popleft()
            if self._queued.get(key) is not low:
                continue  # a stale place: the key moved to the normal lane, or was taken from it already
            del self._queued[key]
            self._active.add(key)
            self._active_low += low
            if self._ready or self._low:
                self._wake.set()  # let the other workers take the rest
            return key, low

    async def _work(self) -> None:
        while True:
            key, low = await self._next()
            try:
                again = await self.handler(key)
            except Exception:  # (cancellation is a BaseException: it ends the worker)
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                first, longest = self.error_backoff
                again = min(first * 2 ** min(failures, 30), longest)  # (a bounded exponent: no overflow)
                logger.exception("reconciling %s failed; retrying in %.1fs", key, again)
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
                if low:
                    self._active_low -= 1
                    self._wake.set()  # a low-priority key may wait for this place
            if key in self._again:
                self.add(key, self._again.pop(key))
            elif again is not None:
                self.add_after(key, again)
            else:
                self.forget(key)
