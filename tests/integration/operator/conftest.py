"""Fixtures of the operator tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp.web
import pytest

from tests.support.operator_helpers import FakeRankZero


@pytest.fixture
async def rank_zero() -> AsyncIterator[FakeRankZero]:
    fake = FakeRankZero()
    app = aiohttp.web.Application()
    fake.routes(app)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", fake.port)
    await site.start()
    try:
        yield fake
    finally:
        await runner.cleanup()
