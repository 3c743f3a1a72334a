"""Waiting until something is true: the one polling loop of the tests, synchronous and async.

    value = eventually(lambda: job.phase() == "Failed" and job.status(), timeout=60, message="the failure")
    pods = await eventually_async(lambda: len(cluster.pods("demo")) == 2 and cluster.pods("demo"))

`check` is called every `interval` seconds until it returns something truthy, which is returned. An
AssertionError raised by `check` counts as "not yet" (so a check may assert); `GiveUp` raised by it ends
the wait at once (what it waits for can no longer happen: the process it watches has exited); any other
exception propagates. When `timeout` seconds pass first, the wait fails with an AssertionError naming
`message` (a string, or a callable that writes it then, e.g. with a log's tail) and the last value or
assertion `check` produced.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Default seconds to wait, and between two checks.
TIMEOUT = 10.0
INTERVAL = 0.05

Message = str | Callable[[], str]


class GiveUp(Exception):
    """Raised by a check: what it waits for can no longer happen; the wait fails at once with this text."""


def _timed_out(timeout: float, message: Message, last: Any) -> AssertionError:
    what = message() if callable(message) else message
    return AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


def eventually(
    check: Callable[[], T | None],
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    message: Message = "the condition",
) -> T:
    """Poll `check()` until it returns something truthy, and return that (see the module docstring)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except AssertionError as error:
            last = error
        except GiveUp as error:
            raise AssertionError(str(error)) from None
        if time.monotonic() > deadline:
            raise _timed_out(timeout, message, last)
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], Any],
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
    message: Message = "the condition",
) -> Any:
    """`eventually` for a coroutine: sleeps without blocking the event loop (where an emulated API server
    may be serving); `check` may be a plain function or return an awaitable. (Typed Any: its checks are
    mostly `condition and value`, whose type is a union with bool.)"""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            last = value
        except AssertionError as error:
            last = error
        except GiveUp as error:
            raise AssertionError(str(error)) from None
        if time.monotonic() > deadline:
            raise _timed_out(timeout, message, last)
        await asyncio.sleep(interval)


__all__ = ["INTERVAL", "TIMEOUT", "GiveUp", "eventually", "eventually_async"]
