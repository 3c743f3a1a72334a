"""The operator's probes: `/healthz` (liveness) and `/readyz` (readiness), for leader and standby alike.

Why not kopf's liveness endpoint: a standby replica does not run kopf (it only waits for the Lease), yet
must answer both probes: alive, and ready, so that a rolling upgrade counts it and the PodDisruptionBudget
lets a node drain. The answers come from the operator's event loop itself, so a blocked loop (a hostile
pod's endless answer, a stuck handler) fails liveness as kopf's did.

- `/healthz`: 200 while the loop answers; the body says the role and, when leading, cached and queued jobs.
- `/readyz`: 200 for a standby, and for a leader once its caches have listed everything; else 503.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class OperatorState:
    """What the probes report, updated by the operator as it goes."""

    role: str = "starting"
    """"starting", "standby", "leader" or "stopping"."""
    synced: bool = False
    """The leader's caches have listed every kind (its reconciles may start)."""
    details: Callable[[], dict[str, Any]] = field(default=lambda: {})
    """More to say in /healthz (the leader's cached and queued jobs)."""

    def ready(self) -> bool:
        return self.role == "standby" or (self.role == "leader" and self.synced)

    def report(self) -> dict[str, Any]:
        return {"role": self.role, "synced": self.synced, **self.details()}


class HealthServer:
    """Serves the probes on (address, port) from the running event loop."""

    def __init__(self, state: OperatorState, address: str, port: int) -> None:
        self.state = state
        self.address, self.port = address, port
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> HealthServer:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port).start()
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return _json(200, self.state.report())

    async def _readyz(self, _: web.Request) -> web.Response:
        return _json(200 if self.state.ready() else 503, self.state.report())


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
