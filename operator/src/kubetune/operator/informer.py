"""List, then watch, one kind of object into a `Store`, and say which objects changed.

This is what client-go's informers do for Go controllers (controller-runtime, JobSet, Kueue): one LIST,
then one long WATCH from the list's resourceVersion, with bookmarks; a watch that ends is resumed
from the last version seen, one that has expired (410 Gone) is replaced by a new LIST, and the whole
kind is re-listed on a long period (`WatchTimeouts.resync`, 30 minutes), never per job. The label
selector is sent to the server, so only kubetune's children travel (kopf's watches filter labels on
the client: the operator received every pod of the cluster).

Why not a library's: the `kubernetes` client has no informer, only `watch.Watch`, which either turns
every event into generated model classes (a few ms per pod at 1,000 jobs) or, with `deserialize=False`,
fails on the watch's ERROR events (it reads a `raw_object` key that only its decoding path sets), and
which answers an expired watch by watching again from the same expired version; kopf filters labels
on the client and keeps no cache. So the calls are the client's own list functions (authentication,
TLS, the API paths) and the line splitting is its `iter_resp_lines`; only the list/watch loop is here.

Each informer runs its blocking stream in a thread of its own and hands every batch of events to the
operator's asyncio loop, which alone touches the stores (no locks). `stop()` shuts the stream's socket
so the thread ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from kubetune.operator import metrics
from kubetune.operator.store import Store

logger = logging.getLogger(__name__)

GONE = 410


@dataclass(frozen=True)
class WatchTimeouts:
    """How long watches last and how failures are retried, in seconds."""

    server: int = 300
    """The API server ends each watch after this long; it is resumed from the last version seen."""
    client: float = 330.0
    """A watch silent for this long (no event, no bookmark) is dropped and resumed."""
    request: float = 30.0
    """A LIST may take this long."""
    retry: tuple[float, float] = (0.5, 30.0)
    """(first, longest) wait before resuming after an error; doubles between them."""
    page_size: int = 500
    """Objects per page of a LIST (client-go's pager uses 500)."""
    resync: float = 1800.0
    """A full re-list after this long (one LIST per kind, checked when a watch ends): a safety net against
    an event lost in a way the watch protocol cannot tell."""


@dataclass(frozen=True)
class Source:
    """One list+watch: a kind in one namespace (or in all: namespace None)."""

    kind: str
    """Resource name, for logs and metrics ("pods")."""
    list_call: Callable[..., Any]
    """The client's list function, bound to its namespace when namespaced (e.g. CoreV1Api.list_namespaced_pod)."""
    namespace: str | None = None
    label_selector: str | None = None


class Informer:
    """Keeps `store` equal to what the API server has for `source`; calls `on_change(obj)` in the event loop
    for every object whose state changed (added, modified, deleted)."""

    def __init__(
        self,
        source: Source,
        store: Store,
        on_change: Callable[[dict[str, Any]], None],
        timeouts: WatchTimeouts,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.source = source
        self.store = store
        self.on_change = on_change
        self.timeouts = timeouts
        self.loop = loop
        self.synced = asyncio.Event()
        self._stopping = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"informer {source.kind}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the watch now (the thread's blocking read is woken by shutting its socket)."""
        self._stopping.set()
        response = self._response
        sock = getattr(getattr(response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        first, longest = self.timeouts.retry
        delay = first
        version: str | None = None
        listed_at = 0.0
        while not self._stopping.is_set():
            try:
                if version is None or time.monotonic() - listed_at > self.timeouts.resync:
                    listed_at = time.monotonic()
                    version = self._list()
                version = self._watch(version)
                delay = first
            except Exception as error:  # any failure: log, wait, resume (as client-go does)
                if self._stopping.is_set():
                    break
                if isinstance(error, ApiException) and error.status == GONE:
                    version = None
                    continue
                metrics.record_api_error(f"watch_{self.source.kind}", int(getattr(error, "status", 0) or 0))
                logger.warning("watching %s failed (%s); resuming in %.1fs", self.source.kind, error, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, longest)

    def _list(self) -> str | None:
        """LIST into the store, a page of `page_size` objects at a time (client-go's pager: the server
        never builds, and this process never holds, one response of every object); the list's
        resourceVersion (where the watch starts). A continue token that expired mid-list (410) restarts it."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            options: dict[str, Any] = {"limit": self.timeouts.page_size} | ({"_continue": token} if token else {})
            try:
                response = self.source.list_call(
                    **self._selector(), **options, _preload_content=False, _request_timeout=self.timeouts.request
                )
            except ApiException as error:
                if error.status != GONE or token is None:
                    raise
                items, token = [], None  # the snapshot the pages came from was compacted: list again
                continue
            body = json.loads(response.data or b"{}")
            items.extend(body.get("items") or [])
            metadata = body.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                version: str | None = metadata.get("resourceVersion")
                self._post(self._replace, items, version)
                return version

    def _watch(self, version: str | None) -> str | None:
        """WATCH from `version` until the server ends it; the last version seen, None when it expired."""
        options: dict[str, Any] = {"resource_version": version} if version else {}
        response = self.source.list_call(
            **self._selector(),
            **options,
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=self.timeouts.server,
            _preload_content=False,
            _request_timeout=(self.timeouts.request, self.timeouts.client),
        )
        self._response = response
        try:
            for line in iter_resp_lines(response):  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    break
                if not line:
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == GONE:
                        return None
                    raise ApiException(status=obj.get("code"), reason=f"{obj.get('reason')}: {obj.get('message')}")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind != "BOOKMARK":
                    self._post(self._apply, kind, obj)
        finally:
            self._response = None
            response.close()
            response.release_conn()
        return version

    def _selector(self) -> dict[str, str]:
        return {"label_selector": self.source.label_selector} if self.source.label_selector else {}

    def _post(self, function: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop is closed: the operator has stopped
            self._stopping.set()

    # -- the event loop ------------------------------------------------------------------------------

    def _replace(self, items: list[dict[str, Any]], version: str | None) -> None:
        for obj in self.store.replace(self.source.namespace, items, version):
            self.on_change(obj)
        self.synced.set()

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        changed = self.store.remove(obj) if kind == "DELETED" else self.store.upsert(obj)
        if changed:
            self.on_change(obj)
