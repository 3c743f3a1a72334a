"""Where training progress and the whole result come from: rank 0 of the current attempt, over HTTP.

The trainer's rank 0 serves `GET /progress` (a `ProgressSnapshot`, see kubetune.api.outcome) beside
its Prometheus `/metrics` on port 9400 of worker 0's pod, and once the run has ended `GET /result` (the
whole `TrainerResult`, which the capped termination message may not hold) until `DELETE /result` tells
it the operator has it (kubetune.policies.handover). The operator asks on every reconcile of a running
job (at least every `reconcile_interval` seconds), at `http://<worker-0 pod IP>:9400`.

That needs network access from the operator pod to trainer pods on TCP 9400: where NetworkPolicies
restrict ingress to trainer pods (labelled `app.kubernetes.io/component: trainer`), allow it from the
operator's pods, e.g. with the chart's `networkPolicy.enabled`. A read that fails at the connection
(refused, reset, timed out) is reported as such (`ProgressRead.error`), so that the policies can say
so in the status (ProgressUnavailable); it never fails a reconcile. The source is injectable
(`RankZero`) so tests can serve snapshots without a trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from pydantic import ValidationError

from kubetune.api.outcome import ProgressSnapshot, TrainerResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressRead:
    """One read of rank 0's progress."""

    snapshot: ProgressSnapshot | None = None
    """The snapshot, when rank 0 answered with one."""
    address: str = ""
    """The URL read; empty when the pod has no IP yet (nothing was tried)."""
    error: str | None = None
    """Why rank 0 could not be reached (connection refused, reset or timed out); None when it answered
    (even without a snapshot: a 503 while starting, a body that is not a snapshot)."""


class RankZero(Protocol):
    """What the operator asks worker 0's pod (a dict as the API returns it)."""

    async def read(self, pod: Mapping[str, Any]) -> ProgressRead: ...

    async def result(self, pod: Mapping[str, Any]) -> TrainerResult | None:
        """The whole result waiting at GET /result; None when unavailable."""

    async def confirm(self, pod: Mapping[str, Any]) -> bool:
        """Tell rank 0 its result was received (DELETE /result); whether it acknowledged."""


#: The name the operator's wiring and tests use for the injectable source.
ProgressSource = RankZero

#: Errors that mean "rank 0 could not be reached", as opposed to an answer that was not a snapshot.
_UNREACHABLE: tuple[type[BaseException], ...] = (aiohttp.ClientConnectionError, TimeoutError, OSError)


class HttpProgressSource:
    """Rank 0 at http://<pod IP>:<port>, each request bounded by `timeout` seconds."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.seconds = timeout
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def url(self, pod: Mapping[str, Any], path: str) -> str | None:
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            return None
        host = f"[{ip}]" if ":" in ip else ip
        return f"http://{host}:{self.port}{path}"

    async def _request(self, method: str, url: str) -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as session,
            session.request(method, url) as response,
        ):
            return response.status, await response.read()

    async def read(self, pod: Mapping[str, Any]) -> ProgressRead:
        url = self.url(pod, "/progress")
        if url is None:
            return ProgressRead()
        try:
            code, body = await self._request("GET", url)
        except _UNREACHABLE as error:
            timed_out = isinstance(error, TimeoutError)
            reason = f"timed out after {self.seconds:g}s" if timed_out else str(error) or type(error).__name__
            logger.debug("no progress from %s: %s", url, reason)
            return ProgressRead(address=url, error=reason)
        except aiohttp.ClientError as error:  # it answered, but not in HTTP that makes sense
            logger.debug("no progress from %s: %s", url, error)
            return ProgressRead(address=url)
        if code != 200:
            return ProgressRead(address=url)
        try:
            return ProgressRead(ProgressSnapshot.model_validate_json(body), address=url)
        except ValidationError as error:
            logger.debug("not a progress snapshot from %s: %s", url, error)
            return ProgressRead(address=url)

    async def result(self, pod: Mapping[str, Any]) -> TrainerResult | None:
        url = self.url(pod, "/result")
        if url is None:
            return None
        try:
            code, body = await self._request("GET", url)
            return TrainerResult.model_validate_json(body) if code == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValidationError) as error:
            logger.info("the whole result could not be read from %s: %s", url, error)
            return None

    async def confirm(self, pod: Mapping[str, Any]) -> bool:
        url = self.url(pod, "/result")
        if url is None:
            return False
        try:
            code, _ = await self._request("DELETE", url)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.info("could not confirm the result to %s: %s", url, error)
            return False
        if code != 204:
            logger.info("rank 0 answered %d to the result's confirmation at %s", code, url)
        return code == 204
