"""Where training progress comes from: rank 0 of the current attempt, over HTTP.

The trainer's rank 0 serves `GET /progress` (a `ProgressSnapshot`, see kubetune.api.outcome) beside
its Prometheus `/metrics` on port 9400 of worker 0's pod. The operator asks for it on every reconcile
of a running job (at least every `reconcile_interval` seconds), at `http://<worker-0 pod IP>:9400`.
That needs network access from the operator pod to trainer pods on TCP 9400: where NetworkPolicies
restrict ingress to trainer pods (labelled `app.kubernetes.io/component: trainer`), allow it from the
operator's pod (`app.kubernetes.io/component: operator`). The chart installs no NetworkPolicy itself.
The source is injectable (`ProgressSource`) so tests can serve snapshots without a trainer. A failed
or slow request only means "no fresh progress"; it never fails a reconcile.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError

from kubetune.api.outcome import ProgressSnapshot

logger = logging.getLogger(__name__)

#: Gets rank 0's snapshot from worker 0's pod (a dict as the API returns it); None when unavailable.
ProgressSource = Callable[[Mapping[str, Any]], Awaitable[ProgressSnapshot | None]]


class HttpProgressSource:
    """GET http://<pod IP>:<port>/progress with a short timeout."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def __call__(self, pod: Mapping[str, Any]) -> ProgressSnapshot | None:
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            return None
        host = f"[{ip}]" if ":" in ip else ip
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.get(f"http://{host}:{self.port}/progress") as response,
            ):
                if response.status != 200:
                    return None
                return ProgressSnapshot.model_validate_json(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValidationError, OSError) as error:
            logger.debug("no progress from %s: %s", ip, error)
            return None
