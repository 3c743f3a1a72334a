"""API faults on demand in front of a real API server: a loopback reverse proxy for the operator.

A real API server cannot be told to refuse the next pod create; a test that checks how the operator
survives conflicts, throttling and server errors puts this proxy between the operator and the server.
It forwards every request (watches are streamed through as they arrive) with the caller's own
credentials, except that a matching `Fault` answers the next N requests itself with the status a real
server sends (409 Conflict, 429 TooManyRequests with Retry-After, 500/503), before anything is stored.

Two more faults are the network's, not the server's: `partition()` cuts the operator off (every open
connection is dropped, every new request's connection is closed unanswered, as a client sees a network
partition) until `heal()`, from the whole server, from some resources only (`partition("pods")`), or only
from their lists and watches (`lists_only`: a client whose watches of them have not resumed yet); and an
API server that cannot be reached (stopped, restarting) is passed on as a dropped connection, never as
an HTTP error the server did not send. The proxy also notes every
request the server answered 410 Gone (`gone`: a watch from an expired resourceVersion, whether answered
by status code or, as the watch cache does, by an ERROR event in the stream), so that a test can prove
that its client met an expired watch rather than assume it.

It listens on plain HTTP on 127.0.0.1 only and talks TLS to the API server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web

from tests.support.ports import free_port

#: Kubernetes' reason for each status code the proxy answers with.
FAULT_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
#: HTTP method -> the API action a Fault names.
ACTIONS = {"POST": "CREATE", "PUT": "UPDATE", "PATCH": "UPDATE", "DELETE": "DELETE"}
#: /api/v1/... or /apis/<group>/<version>/..., then optionally namespaces/<ns>/, <plural>[/<name>[/<sub>]]
_PATH = re.compile(
    r"^/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
#: How a watch stream says that its resourceVersion has expired: an ERROR event with code 410 (Gone).
_GONE_EVENT = re.compile(rb'"type":\s*"ERROR".*?"code":\s*410\b')
#: Hop-by-hop and framing headers that the proxy must not copy.
_SKIPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


@dataclass
class Fault:
    """Answer the next `times` requests that match with HTTP `status` (nothing is stored)."""

    action: str
    """CREATE (POST), UPDATE (PUT/PATCH) or DELETE."""
    status: int
    times: int
    plural: str | None = None
    """Only requests for this resource (e.g. `pods`, `finetunejobs`); None: any resource."""
    subresource: str | None = "*"
    """Only this subresource (`status`, or None for the object itself); `*`: either."""
    namespace: str | None = None
    """Only requests in this namespace; None: any."""
    served: int = 0

    def matches(self, method: str, path: str) -> bool:
        parsed = _PATH.match(path)
        if self.served >= self.times or ACTIONS.get(method) != self.action or parsed is None:
            return False
        namespace, plural = parsed["ns"], parsed["plural"]
        if parsed["ns"] is None and plural == "namespaces":
            return False  # a namespace itself, never a kubetune object
        if self.plural is not None and plural != self.plural:
            return False
        if self.namespace is not None and namespace != self.namespace:
            return False
        return self.subresource == "*" or parsed["sub"] == self.subresource


def _status_response(code: int, message: str) -> aiohttp.web.Response:
    reason = FAULT_REASONS.get(code, "InternalError")
    headers = {"Retry-After": "1"} if code == 429 else None
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code}
    body |= {"reason": reason, "message": message}
    return aiohttp.web.json_response(body, status=code, headers=headers)


class FaultProxy:
    """http://127.0.0.1:<port> -> `upstream` (https), with `inject(Fault(...))`; runs in its own thread."""

    def __init__(self, upstream: str, ca_file: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.faults: list[Fault] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._runner: aiohttp.web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._in_flight: dict[asyncio.Task[Any], aiohttp.web.Request] = {}
        self.partitioned: tuple[str, ...] | None = None
        """The resources the operator is cut off from (`partition()`; empty: all), None once healed."""
        self.lists_only = False
        """Whether the partition cuts only the lists and watches of those resources."""
        self.gone: list[str] = []
        """Path and query of each request the API server answered 410 Gone, in order (module docstring)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, fault: Fault) -> Fault:
        self._loop.call_soon_threadsafe(self.faults.append, fault)
        return fault

    def partition(self, *plurals: str, lists_only: bool = False) -> None:
        """Cut the operator off from the API server, or only from these resources (`pods`, `finetunejobs`;
        `lists_only`: only from their lists and watches), instead of what it was cut off from: its open
        connections to them (watches) are dropped, new ones closed unanswered."""
        asyncio.run_coroutine_threadsafe(self._partition(plurals, lists_only), self._loop).result(10)

    def heal(self) -> None:
        """The operator reaches the whole API server again."""
        self._loop.call_soon_threadsafe(setattr, self, "partitioned", None)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _start(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        app = aiohttp.web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = aiohttp.web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _partition(self, plurals: tuple[str, ...], lists_only: bool) -> None:
        self.partitioned, self.lists_only = plurals, lists_only
        cut = [task for task, request in self._in_flight.items() if self._cut_off(request)]
        for task in cut:
            _drop(self._in_flight[task])
            task.cancel()
        await asyncio.gather(*cut, return_exceptions=True)

    def _cut_off(self, request: aiohttp.web.Request) -> bool:
        if self.partitioned is None:
            return False
        if not self.partitioned:
            return True
        parsed = _PATH.match(request.path)
        if parsed is None or parsed["plural"] not in self.partitioned:
            return False
        return not self.lists_only or (request.method == "GET" and parsed["name"] is None)

    async def _stop(self) -> None:
        for task in self._in_flight:  # streams still open (watches): end them before the loop goes
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
            await asyncio.sleep(0.25)  # TLS transports finish closing on the loop (aiohttp: graceful shutdown)

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight[task] = request
        try:
            if self._cut_off(request):
                return _drop(request)
            return await self._forward(request)
        finally:
            self._in_flight.pop(task, None)

    async def _forward(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        for fault in self.faults:
            if fault.matches(request.method, request.path):
                fault.served += 1
                return _status_response(fault.status, f"injected fault {fault.served}/{fault.times}")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIPPED_HEADERS}
        body = await request.read()
        # aiohttp would label a body without a Content-Type as application/octet-stream, which the API server
        # refuses (415); pass on exactly what the caller sent
        try:
            return await self._pass(request, headers, body)
        except aiohttp.ClientConnectionError:  # the server cannot be reached: so the caller cannot reach it
            return _drop(request)

    async def _pass(
        self, request: aiohttp.web.Request, headers: dict[str, str], body: bytes
    ) -> aiohttp.web.StreamResponse:
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            skip_auto_headers=("Content-Type",),
        ) as upstream:
            if upstream.status == 410:
                self.gone.append(request.path_qs)
            response = aiohttp.web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _SKIPPED_HEADERS:
                    response.headers[key] = value
            if upstream.headers.get("Content-Encoding"):
                response.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
            await response.prepare(request)
            watch, tail = request.query.get("watch", "").lower() in ("true", "1"), b""
            try:
                async for chunk in upstream.content.iter_any():
                    if watch and _GONE_EVENT.search(tail + chunk):
                        self.gone.append(request.path_qs)
                        watch = False  # once per request: the server ends the stream after it
                    tail = chunk[-256:]
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientError):
                pass  # either side went away (a watch ended); the other side sees its connection close
            return response


def _drop(request: aiohttp.web.Request) -> aiohttp.web.Response:
    """Close the caller's connection unanswered, as a network partition or a stopped server does (the
    response returned is never sent)."""
    if request.transport is not None:
        request.transport.abort()
    return aiohttp.web.Response(status=503)
