"""The process kubelet's calls ride out an API server that is away for a while, as a kubelet's do.

A kubelet never drops what it has to tell the API server because the server cannot be reached for a
moment (restarted, upgraded, its etcd away): its status manager and its pod deletions retry until the
server answers. The process kubelet (kubelet.py, node.py) makes each of its calls through
`until_answered`, which retries a call that found no server (refused, dropped) or a server that could not
serve it (5xx, 429) for up to `OUTAGE_SECONDS`: longer than any outage a test causes
(tests/e2e/test_control_plane_faults.py), short enough that a test that breaks the server for good ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a call is retried while the API server cannot answer it.
OUTAGE_SECONDS = 90.0
#: Seconds between two tries: the first, and the longest (doubling in between).
RETRY_SECONDS = (0.1, 2.0)


class Unavailable(Exception):
    """The API server answered, but could not serve the call (5xx, 429): it is worth trying again."""


def check_available(response: aiohttp.ClientResponse) -> None:
    """Raise `Unavailable` for an answer that says "not now" rather than "no"."""
    if response.status >= 500 or response.status == 429:
        raise Unavailable(f"{response.method} {response.url}: HTTP {response.status}")


async def until_answered(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`'s result once the API server answers it; retried meanwhile, then the last error raised."""
    deadline = time.monotonic() + OUTAGE_SECONDS
    delay, longest = RETRY_SECONDS
    while True:
        try:
            return await call()
        except (aiohttp.ClientConnectionError, Unavailable) as error:
            if time.monotonic() > deadline:
                raise
            logger.debug("kubelet: the API server did not answer (%r); again in %.1fs", error, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, longest)
