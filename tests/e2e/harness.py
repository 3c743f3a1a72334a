"""The end-to-end harness: the emulated API server, the real operator and the process kubelet, together.

`tests/support/apiserver.Cluster` already serves an emulated API server (kmock's KubernetesEmulator
with a real server's metadata, label selectors, garbage collection and graceful pod deletion) and runs
the real operator against it. This module adds what end-to-end tests need on top:

- `E2EApiServer`: API faults on demand (`inject(...)`: answer the next N matching creates or patches
  with 409, 429 or 500 *before* anything is stored, as a real server refusing a request does), and the
  fixes the real `kubectl` needs (see `kubectl_compat.py`).
- `E2ECluster`: the Cluster in a background thread with its own event loop, so that synchronous tests,
  the kubelet's thread and the operator's thread all talk to one server for a whole pytest session, and
  a synchronous facade over it (create/patch/delete jobs, read status, pods and events;
  waiting is tests/support/waiting.py).
- the `ProcessKubelet` from kubelet.py, started against the same server.

Everything talks HTTP to the server except the read helpers, which read the server's memory through
its own event loop (safe: one thread touches it).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import kmock
from kmock._internal import rendering

from tests.e2e.kubectl_compat import KubectlCompatible, declare_names
from tests.support.apiserver import JOBS, PODS, ApiServer, Cluster, declare_resources, fast_settings

T = TypeVar("T")

#: Kubernetes' reason for each status code the fault injector answers with.
FAULT_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


@dataclass
class Fault:
    """Answer the next `times` requests that match with HTTP `status` (nothing is stored)."""

    action: str
    """CREATE (POST), UPDATE (PATCH) or DELETE."""
    status: int
    times: int
    plural: str | None = None
    """Only requests for this resource (e.g. `pods`, `finetunejobs`); None: any resource."""
    subresource: str | None = "*"
    """Only this subresource (`status`, or None for the object itself); `*`: either."""
    namespace: str | None = None
    """Only requests in this namespace; None: any."""
    served: int = 0

    def matches(self, request: rendering.Request) -> bool:
        if self.served >= self.times or request.resource is None or request.action is None:
            return False
        if request.action.value != self.action:
            return False
        if self.plural is not None and request.resource.plural != self.plural:
            return False
        if self.namespace is not None and (request.namespace or _body_namespace(request)) != self.namespace:
            return False
        return self.subresource == "*" or request.subresource == self.subresource


def _body_namespace(request: rendering.Request) -> str | None:
    data = request.data if isinstance(request.data, dict) else {}
    namespace: str | None = (data.get("metadata") or {}).get("namespace")
    return namespace


class E2EApiServer(KubectlCompatible, ApiServer):
    """The shared emulator plus fault injection and a bounded request history (this class) and kubectl
    compatibility (the mixin).

    kmock keeps every request it served and, to route a new one, checks `request in view` for each
    reaction, which walks that whole history: each request costs time proportional to all before it
    (measured: 20 ms per request at first, 100 ms after 2,000). A session of end-to-end runs makes tens
    of thousands of requests, so this server forgets every request that is no longer being served.
    (No test here reads the request history; tests that do use the plain ApiServer.)
    """

    faults: list[Fault]

    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        for fault in getattr(self, "faults", []):
            if fault.matches(request):
                fault.served += 1
                return _status_response(fault.status, f"injected fault {fault.served}/{fault.times}")
        in_flight = self.__dict__.setdefault("_in_flight", set())
        in_flight.add(id(request))
        try:
            return await super()._handle(request)
        finally:
            in_flight.discard(id(request))
            self._requests[:] = [r for r in self._requests if id(r) in in_flight]


def _status_response(code: int, message: str) -> aiohttp.web.StreamResponse:
    reason = FAULT_REASONS.get(code, "InternalError")
    headers = {"Retry-After": "1"} if code == 429 else None
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code}
    body |= {"reason": reason, "message": message}
    return aiohttp.web.json_response(body, status=code, headers=headers)


class E2ECluster:
    """`Cluster` (emulator + operator) in a thread of its own, with a synchronous facade."""

    def __init__(self, namespace: str = "default") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="e2e-cluster", daemon=True)
        self.cluster = Cluster(settings=fast_settings(), graceful_pod_deletion=True, namespace=namespace)
        # The Cluster builds a plain ApiServer; the harness swaps in its subclass before the server starts.
        server = E2EApiServer()
        server.faults = []
        server.graceful_pod_deletion = True
        declare_resources(server)
        declare_names(server)
        self.cluster.server = server
        self.server = server

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> E2ECluster:
        self._thread.start()
        self.call(self.cluster.__aenter__(), timeout=60)
        return self

    def stop(self) -> None:
        try:
            self.call(self.cluster.__aexit__(None, None, None), timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    @property
    def url(self) -> str:
        return self.cluster.url.rstrip("/")

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def read(self, function: Callable[[], T]) -> T:
        """Run `function` in the server's thread (the only thread that touches its memory)."""

        async def run() -> T:
            return function()

        result: T = self.call(run())
        return result

    def restart_operator(self) -> None:
        self.call(self.cluster.restart_operator(), timeout=60)

    def stop_operator(self) -> None:
        self.call(self.cluster.stop_operator(), timeout=60)

    def start_operator(self) -> None:
        self.call(self.cluster.start_operator(), timeout=60)

    # -- objects (any namespace) -----------------------------------------------------------------------

    def objects(self, resource: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        def collect() -> list[dict[str, Any]]:
            wanted = kmock.resource(resource)
            found = []
            for (res, ns, _), obj in self.server.objects.items():
                if res != wanted or ns != namespace or obj.deleted:
                    continue
                raw = copy.deepcopy(dict(obj.raw))
                have = raw.get("metadata", {}).get("labels") or {}
                if all(have.get(k) == v for k, v in (labels or {}).items()):
                    found.append(raw)
            return sorted(found, key=lambda o: o["metadata"]["name"])

        return self.read(collect)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        jobs = [j for j in self.objects(JOBS, namespace) if j["metadata"]["name"] == name]
        return jobs[0] if jobs else None

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.job(namespace, name)
        assert job is not None, f"FineTuneJob {namespace}/{name} does not exist"
        return job.get("status") or {}

    def pods(self, namespace: str, job: str, attempt: int | None = None) -> list[dict[str, Any]]:
        labels = {"kubetune.io/job-name": job} | ({"kubetune.io/attempt": str(attempt)} if attempt else {})
        return self.objects(PODS, namespace, labels)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [e for e in self.objects("v1/events", namespace) if e.get("involvedObject", {}).get("name") == name]

    # -- requests through the API ----------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        async def send() -> tuple[int, dict[str, Any]]:
            headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
            async with (
                aiohttp.ClientSession() as session,
                session.request(method, self.url + path, data=json.dumps(body), headers=headers) as response,
            ):
                return response.status, await response.json(content_type=None)

        result: tuple[int, dict[str, Any]] = self.call(send())
        return result

    def create(self, resource: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        document = copy.deepcopy(dict(body))
        document.setdefault("metadata", {})["namespace"] = namespace
        code, payload = self.request("POST", api_path(resource, namespace), document)
        assert code < 300, f"create {resource}: HTTP {code}: {payload}"
        return payload

    def patch(self, resource: str, namespace: str, name: str, patch: Mapping[str, Any], sub: str = "") -> None:
        code, payload = self.request("PATCH", api_path(resource, namespace, name, sub), dict(patch))
        assert code < 300, f"patch {resource} {name}: HTTP {code}: {payload}"

    def delete(self, resource: str, namespace: str, name: str) -> None:
        code, payload = self.request("DELETE", api_path(resource, namespace, name))
        assert code < 300 or code == 404, f"delete {resource} {name}: HTTP {code}: {payload}"


def api_path(resource: str, namespace: str, name: str = "", subresource: str = "") -> str:
    group_version, plural = resource.rsplit("/", 1)
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


def dump_folder(path: Path, limit: int = 4000) -> str:
    """The tail of every log file below `path`, for failure messages."""
    parts = []
    for log in sorted(path.rglob("*.log")):
        parts.append(f"--- {log} ---\n{log.read_text(errors='replace')[-limit:]}")
    return "\n".join(parts)
