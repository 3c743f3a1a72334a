"""A fake rank 0 for the operator tests (their manifests come from tests/support/builders.py)."""

from __future__ import annotations

import aiohttp.web

from kubetune.api.outcome import ProgressSnapshot
from tests.support.ports import free_port


class FakeRankZero:
    """Serves GET /progress like the trainer's rank 0 (the snapshot is set by the test)."""

    def __init__(self) -> None:
        self.snapshot: ProgressSnapshot | None = None
        self.port = free_port()
        self.requests = 0

    async def _progress(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.requests += 1
        if self.snapshot is None:
            return aiohttp.web.Response(status=503)
        return aiohttp.web.Response(body=self.snapshot.model_dump_json(by_alias=True), content_type="application/json")
