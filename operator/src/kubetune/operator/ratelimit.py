"""A token bucket for the operator's API writes (creates, patches, deletes).

Why: a thousand jobs restarting at once (a node pool lost, a quota raised) would otherwise send
thousands of writes in a second to an API server that other controllers share. client-go limits every
client the same way (QPS and burst); reads need no limit here because they come from the watch cache.

Progress writes (a status whose only change is rank 0's figures) are low priority: they take a token
only while more than half the burst is left, so a wave of progress writes never makes a create or a
gang restart wait, and their rate adapts to whatever the other writes leave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class WriteLimit:
    """How fast the operator may write to the API server."""

    per_second: float = 200.0
    """Sustained writes per second (a job's launch is 5: ConfigMap, Service, status, two pods)."""
    burst: int = 400
    """Writes allowed at once after a quiet period."""


class TokenBucket:
    """`acquire()` returns at once while tokens last, else when the next one is due (first come, first served)."""

    def __init__(self, limit: WriteLimit, clock: Callable[[], float] = time.monotonic) -> None:
        if limit.per_second <= 0 or limit.burst < 1:
            raise ValueError("write limit: per_second must be > 0 and burst >= 1")
        self.limit = limit
        self.clock = clock
        self._tokens = float(limit.burst)
        self._updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(float(self.limit.burst), self._tokens + (now - self._updated) * self.limit.per_second)
        self._updated = now

    def wait_for_token(self) -> float:
        """Take a token; the seconds to wait before using it (0 when one was there)."""
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.limit.per_second

    @property
    def reserve(self) -> float:
        """Tokens low-priority writes leave for the others."""
        return self.limit.burst / 2

    def wait_for_spare_token(self) -> float:
        """Take a token if more than `reserve` are left (0), else the seconds until there may be (none taken)."""
        self._refill()
        if self._tokens >= self.reserve + 1.0:
            self._tokens -= 1.0
            return 0.0
        return (self.reserve + 1.0 - self._tokens) / self.limit.per_second

    async def acquire(self, low: bool = False) -> None:
        """Wait for a token; a `low` write waits until one is spare (re-checked: others may come first)."""
        if low:
            while (wait := self.wait_for_spare_token()) > 0:
                await asyncio.sleep(wait)
            return
        wait = self.wait_for_token()  # (no lock: the event loop runs this without interruption)
        if wait > 0:
            await asyncio.sleep(wait)
