"""A fake rank 0 for the operator tests (their manifests come from tests/support/builders.py)."""

from __future__ import annotations

import time

import aiohttp.web

from kubetune.api.outcome import ProgressSnapshot, TrainerResult
from tests.support.ports import free_port


class FakeRankZero:
    """Serves GET /progress like the trainer's rank 0 (the snapshot is set by the test) and, once a test
    sets `result`, the handover: GET /result, and DELETE /result; for `refuse_confirms_for` seconds from
    the first DELETE both are answered 503 (rank 0 unreachable for a moment), then as usual."""

    def __init__(self) -> None:
        self.snapshot: ProgressSnapshot | None = None
        self.result: TrainerResult | None = None
        self.refuse_confirms_for = 0.0
        self.confirm_attempts: list[float] = []
        self.confirmed = False
        self.port = free_port()
        self.requests = 0

    async def _progress(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.requests += 1
        if self.snapshot is None:
            return aiohttp.web.Response(status=503)
        return aiohttp.web.Response(body=self.snapshot.model_dump_json(by_alias=True), content_type="application/json")

    def _unreachable(self) -> bool:
        """Within `refuse_confirms_for` of the first confirmation: rank 0 answers nothing useful."""
        attempts = self.confirm_attempts
        return bool(attempts) and time.monotonic() - attempts[0] < self.refuse_confirms_for

    async def _result(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        if self.result is None or self.confirmed or self._unreachable():
            return aiohttp.web.Response(status=404 if self.result is None or self.confirmed else 503)
        return aiohttp.web.Response(body=self.result.wire(), content_type="application/json")

    async def _confirm(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        self.confirm_attempts.append(time.monotonic())
        if self.confirm_attempts[-1] - self.confirm_attempts[0] < self.refuse_confirms_for:
            return aiohttp.web.Response(status=503)
        self.confirmed = self.result is not None
        return aiohttp.web.Response(status=204 if self.confirmed else 404)

    def routes(self, app: aiohttp.web.Application) -> None:
        app.router.add_get("/progress", self._progress)
        app.router.add_get("/result", self._result)
        app.router.add_delete("/result", self._confirm)
