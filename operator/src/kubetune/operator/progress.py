"""Where training progress and the whole result come from: rank 0 of the current attempt, over HTTP.

The trainer's rank 0 serves `GET /progress` (a `ProgressSnapshot`, see kubetune.api.outcome) beside
its Prometheus `/metrics` on port 9400 of worker 0's pod, and once the run has ended `GET /result` (the
whole `TrainerResult`, which the capped termination message may not hold) until `DELETE /result` tells
it the operator has it (kubetune.policies.handover). The operator reads progress outside its reconciles
(kubetune.operator.progress_poller, on the cadence of kubetune.policies.progress_cadence), at
`http://<worker-0 pod IP>:9400`; the result is read by the reconcile that sees it waiting.

That needs network access from the operator pod to trainer pods on TCP 9400: where NetworkPolicies
restrict ingress to trainer pods (labelled `app.kubernetes.io/component: trainer`), allow it from the
operator's pods, e.g. with the chart's `networkPolicy.enabled`. A read that fails at the connection
(refused, reset, timed out) is reported as such (`ProgressRead.error`), so that the policies can say
so in the status (ProgressUnavailable); it never fails a reconcile. The source is injectable
(`RankZero`) so tests can serve snapshots without a trainer.

Rank 0 runs an image the job's author chose, so everything read from it is untrusted, and one operator
serves every team: a body is read only up to a cap (`ReadLimits`: a declared Content-Length beyond it is
refused unread, a stream is cut one byte past it), each request is bounded in total time (a pod that
trickles bytes or holds the connection open cannot hold a reader long), and an answer refused for
either reason, or one that is not what the protocol says, is reported (`ProgressRead.refused`) so that
the job's status names it (ProgressUnavailable, reason RankZeroAnswerRefused). Worst case in memory:
`progress_readers` progress reads of `progress_bytes` (16 x 64 KiB = 1 MiB of bytes, about ten times that
parsed) and `results_at_once` result reads of `result_bytes` (4 x 256 KiB, about 10 MiB parsed). Every request carries
the attempt's token (`Authorization: Bearer`, kubetune.api.invocation.RANK0_TOKEN_ENV), which rank 0
requires: a peer that reaches the pod but cannot read the pod's spec cannot take the result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from pydantic import ValidationError

from kubetune.api.invocation import RANK0_TOKEN_ENV
from kubetune.api.outcome import ProgressSnapshot, TrainerResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadLimits:
    """How much the operator reads from one pod, at most. Sizes in bytes."""

    progress_bytes: int = 64 * 1024
    """Largest `GET /progress` body read. A snapshot is about 1-2 KB (losses, ETA, a few fit reports)."""
    result_bytes: int = 256 * 1024
    """Largest `GET /result` body read. A whole result is a few KB (evaluation table, fit reports; the
    largest the API allows, tests/support/results.py, about 21 kB)."""
    results_at_once: int = 4
    """`GET /result` reads in flight at once, across all jobs: a result is read once per run, so a few
    suffice, and a parsed body takes about ten times its bytes in objects (a 256 KiB body of tiny fit
    reports, about 2.5 MiB)."""


@dataclass(frozen=True)
class ProgressRead:
    """One read of rank 0's progress."""

    snapshot: ProgressSnapshot | None = None
    """The snapshot, when rank 0 answered with one."""
    address: str = ""
    """The URL read; empty when the pod has no IP yet (nothing was tried)."""
    error: str | None = None
    """Why rank 0 could not be reached (connection refused, reset or timed out); None when it answered
    (even without a snapshot: a 503 while starting)."""
    refused: str | None = None
    """Why what rank 0 answered was refused (a body over the cap, a 200 that is not a snapshot, HTTP
    that makes no sense); None otherwise."""


@dataclass(frozen=True)
class ResultRead:
    """One read of rank 0's whole result."""

    result: TrainerResult | None = None
    refused: str | None = None
    """Why the answer was refused (as `ProgressRead.refused`); None when it was used or was simply not there."""


class RankZero(Protocol):
    """What the operator asks worker 0's pod (a dict as the API returns it)."""

    async def read(self, pod: Mapping[str, Any]) -> ProgressRead: ...

    async def result(self, pod: Mapping[str, Any]) -> ResultRead:
        """The whole result waiting at GET /result (`result` None when unavailable)."""

    async def confirm(self, pod: Mapping[str, Any]) -> bool:
        """Tell rank 0 its result was received (DELETE /result); whether it acknowledged."""


#: The name the operator's wiring and tests use for the injectable source.
ProgressSource = RankZero

#: Errors that mean "rank 0 could not be reached", as opposed to an answer that was not a snapshot.
_UNREACHABLE: tuple[type[BaseException], ...] = (aiohttp.ClientConnectionError, TimeoutError, OSError)


class BodyTooLarge(Exception):
    """Rank 0 declared or sent more than the cap; nothing past the cap was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"answered with more than {limit} bytes (the operator reads at most {limit})")


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, if it is at most `limit` bytes; raises BodyTooLarge as soon as it is known to be larger
    (a declared Content-Length, or one byte past the cap while streaming). The request's total timeout
    bounds the time."""
    if response.content_length is not None and response.content_length > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def pod_url(pod: Mapping[str, Any], port: int, path: str) -> str | None:
    """http://<pod IP>:<port><path>; None while the pod has no IP."""
    ip = pod.get("status", {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


def pod_env_value(pod: Mapping[str, Any], name: str) -> str | None:
    """A variable's literal value in the pod's own spec (a token the operator put there when it created the
    pod); None when absent or empty."""
    for container in pod.get("spec", {}).get("containers") or []:
        for variable in container.get("env") or []:
            if variable.get("name") == name and variable.get("value"):
                return str(variable["value"])
    return None


def pod_token(pod: Mapping[str, Any]) -> str | None:
    """The attempt's token for rank 0's endpoints, from the pod's own spec."""
    return pod_env_value(pod, RANK0_TOKEN_ENV)


class HttpProgressSource:
    """Rank 0 at http://<pod IP>:<port>, each request bounded by `timeout` seconds in all (connecting,
    sending, reading the body) and its body by `limits`."""

    def __init__(self, port: int, timeout: float, limits: ReadLimits | None = None) -> None:
        self.port = port
        self.seconds = timeout
        self.limits = limits or ReadLimits()
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._results = asyncio.Semaphore(self.limits.results_at_once)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def url(self, pod: Mapping[str, Any], path: str) -> str | None:
        return pod_url(pod, self.port, path)

    async def _request(self, method: str, url: str, pod: Mapping[str, Any], limit: int = 0) -> tuple[int, bytes]:
        token = pod_token(pod)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            async with self._session.request(method, url, headers=headers, allow_redirects=False) as response:
                return response.status, await read_capped(response, limit)
        async with (
            self._new_session() as session,
            session.request(method, url, headers=headers, allow_redirects=False) as response,
        ):
            return response.status, await read_capped(response, limit)

    def _new_session(self) -> aiohttp.ClientSession:
        # auto_decompress off: a small gzip body could inflate past the cap in one step (the trainer never
        # compresses; a compressed answer fails as "not a snapshot"). No keep-alive: a thousand pods, each read
        # every 15 s or less often, would hold a thousand idle sockets.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        return aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False, connector=connector)

    def open(self) -> None:
        """Share one client session between requests from now on (in this event loop), until `close()`: a
        session per request costs about as much CPU as the request (measured at 1,000 jobs)."""
        if self._session is None:
            self._session, self._session_loop = self._new_session(), asyncio.get_running_loop()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def read(self, pod: Mapping[str, Any]) -> ProgressRead:
        url = self.url(pod, "/progress")
        if url is None:
            return ProgressRead()
        try:
            code, body = await self._request("GET", url, pod, self.limits.progress_bytes)
        except _UNREACHABLE as error:
            timed_out = isinstance(error, TimeoutError)
            reason = f"timed out after {self.seconds:g}s" if timed_out else str(error) or type(error).__name__
            logger.debug("no progress from %s: %s", url, reason)
            return ProgressRead(address=url, error=reason)
        except (aiohttp.ClientError, BodyTooLarge) as error:  # it answered, but not in HTTP that makes sense
            logger.info("refused the answer of %s: %s", url, error)
            return ProgressRead(address=url, refused=f"GET /progress {error}")
        if code != 200:
            return ProgressRead(address=url)
        try:
            return ProgressRead(ProgressSnapshot.model_validate_json(body), address=url)
        except ValidationError as error:
            logger.info("not a progress snapshot from %s: %s", url, error.errors()[0]["msg"])
            return ProgressRead(address=url, refused="GET /progress answered 200 with a body that is not a snapshot")

    async def result(self, pod: Mapping[str, Any]) -> ResultRead:
        url = self.url(pod, "/result")
        if url is None:
            return ResultRead()
        try:
            async with self._results:
                code, body = await self._request("GET", url, pod, self.limits.result_bytes)
                return ResultRead(TrainerResult.model_validate_json(body) if code == 200 else None)
        except BodyTooLarge as error:
            logger.info("refused the whole result of %s: %s", url, error)
            return ResultRead(refused=f"GET /result {error}")
        except ValidationError:
            logger.info("not a whole result from %s", url)
            return ResultRead(refused="GET /result answered 200 with a body that is not a result")
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.info("the whole result could not be read from %s: %s", url, error)
            return ResultRead()

    async def confirm(self, pod: Mapping[str, Any]) -> bool:
        url = self.url(pod, "/result")
        if url is None:
            return False
        try:
            code, _ = await self._request("DELETE", url, pod)
        except (aiohttp.ClientError, TimeoutError, OSError, BodyTooLarge) as error:
            logger.info("could not confirm the result to %s: %s", url, error)
            return False
        if code != 204:
            logger.info("rank 0 answered %d to the result's confirmation at %s", code, url)
        return code == 204
