"""Rank 0's progress, read outside the reconcile workers by a bounded pool, on a cadence of its own.

Why: a reconcile that reads rank 0 over HTTP holds a worker for up to the read's timeout, and a job read
on every reconcile must be reconciled every few seconds just to be read: at 1,000 running jobs that is
200 reconciles a second with nothing changing (0.14 cores at rest) and, with progress advancing, a status
write per job per reconcile. Here each tracked job's worker 0 is read on the cadence of
kubetune.policies.progress_cadence (the write interval while progress changes, less and less often while
it does not, backing off while reads fail); at most `readers` reads run at once, in tasks of their own. A
read asks for the job's reconcile only when the status has something to say (`notify`, which the wiring
points at the work queue's low-priority lane), and the reconcile takes the latest read from here
(`latest`), never waiting on a pod.

The reconcile says which pod to read (`track`, each time it runs for a running job, or a finished one
whose rank 0 still hands its result over) and when to stop (`untrack`). A new pod (another attempt)
starts over: nothing read from an older attempt's rank 0 is kept. What is held per job is one parsed
snapshot (at most `ReadLimits.progress_bytes` read) and a few numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.operator.builders import ATTEMPT_LABEL
from kubetune.operator.progress import ProgressRead, RankZero
from kubetune.policies.progress_cadence import Cadence, ReadMemory, ReadOutcome, after_read

logger = logging.getLogger(__name__)

#: Asks for a job's reconcile in so many seconds: (job key, seconds).
Notify = Callable[[Hashable, float], None]


def pod_uid(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata", {})
    return str(metadata.get("uid") or metadata.get("name"))


def _has_address(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("status") or {}).get("podIP"))


def outcome_of(read: ProgressRead, pod: Mapping[str, Any]) -> ReadOutcome:
    """A read as the cadence policy sees it."""
    if read.error is not None:
        return ReadOutcome("unreachable")
    if read.refused is not None:
        return ReadOutcome("refused")
    snapshot = read.snapshot
    if snapshot is None:
        return ReadOutcome("snapshot")
    attempt = (pod.get("metadata", {}).get("labels") or {}).get(ATTEMPT_LABEL)
    other_attempt = snapshot.attempt is not None and str(snapshot.attempt) != attempt
    fingerprint = snapshot.model_dump_json(exclude={"updated_at"})
    return ReadOutcome("snapshot", fingerprint, urgent=snapshot.result_ready or other_attempt)


@dataclass
class _Tracked:
    """One job's worker 0 being read."""

    uid: str
    pod: Mapping[str, Any]
    memory: ReadMemory
    read: ProgressRead | None = None
    timer: asyncio.TimerHandle | None = None
    reading: bool = False


class ProgressPoller:
    """Reads the tracked pods on their cadence, `readers` at a time; keeps the latest read of each."""

    def __init__(
        self, source: RankZero, cadence: Cadence, readers: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if readers < 1:
            raise ValueError("progress readers must be >= 1")
        self.source = source
        self.cadence = cadence
        self.clock = clock
        self.notify: Notify = lambda key, seconds: None
        """Where a read asks for its job's reconcile (set by the wiring)."""
        self._readers = readers
        self._gate: asyncio.Semaphore | None = None
        self._tracked: dict[Hashable, _Tracked] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.reads = 0
        """Reads done so far (for tests and the benchmark)."""

    def track(self, key: Hashable, pod: Mapping[str, Any]) -> None:
        """Read `pod` (the job's worker 0 now) from now on; a pod other than the one read so far starts over."""
        entry = self._tracked.get(key)
        if entry is not None and entry.uid == pod_uid(pod):
            had_address, entry.pod = _has_address(entry.pod), pod
            if not had_address and _has_address(pod) and entry.timer is None and not entry.reading:
                self._schedule(key, entry, 0.0)
            return
        self.untrack(key)
        entry = _Tracked(pod_uid(pod), pod, ReadMemory())
        self._tracked[key] = entry
        if _has_address(pod):
            self._schedule(key, entry, 0.0)

    def untrack(self, key: Hashable) -> None:
        entry = self._tracked.pop(key, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    def latest(self, key: Hashable, pod: Mapping[str, Any]) -> tuple[ProgressRead | None, float | None]:
        """The latest read of `pod` (None before the first) and since when reads of it fail at the
        connection (monotonic seconds; None while it answers)."""
        entry = self._tracked.get(key)
        if entry is None or entry.uid != pod_uid(pod):
            return None, None
        return entry.read, entry.memory.failing_since

    def tracked(self) -> int:
        return len(self._tracked)

    async def stop(self) -> None:
        for key in list(self._tracked):
            self.untrack(key)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)

    def _schedule(self, key: Hashable, entry: _Tracked, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = loop.call_later(max(seconds, 0.0), self._start_read, key, entry)

    def _start_read(self, key: Hashable, entry: _Tracked) -> None:
        entry.timer = None
        if self._tracked.get(key) is not entry:
            return  # untracked, or another pod since
        entry.reading = True
        task = asyncio.get_running_loop().create_task(self._read(key, entry), name=f"progress read {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, key: Hashable, entry: _Tracked) -> None:
        if self._gate is None:
            self._gate = asyncio.Semaphore(self._readers)
        try:
            async with self._gate:
                if self._tracked.get(key) is not entry:
                    return
                pod = entry.pod
                read = await self.source.read(pod)
            self.reads += 1
        except Exception:  # a source must not fail, but a poller that stops reading a job would be silent
            logger.exception("reading rank 0 of %s failed unexpectedly; reading again later", key)
            read = ProgressRead(address="?", error="the read failed unexpectedly (the operator's log says why)")
        finally:
            entry.reading = False
        if self._tracked.get(key) is not entry:
            return
        if not read.address:  # no pod IP yet: read again once the pod has one (`track` with it)
            return
        steps = after_read(entry.memory, outcome_of(read, pod), self.clock(), self.cadence)
        entry.memory, entry.read = steps.memory, read
        self._schedule(key, entry, steps.read_in)
        if steps.reconcile_in is not None:
            self.notify(key, steps.reconcile_in)
