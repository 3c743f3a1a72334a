"""The informer's list/watch loop against a scripted server: list (in pages), watch from the list's version,
resume from the last version seen, re-list on 410 Gone, bookmarks move the version without touching the store.
(The real API server is behind every end-to-end scenario: tests/e2e.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from kubetune.operator.builders import JOB_LABEL
from kubetune.operator.informer import Informer, Source, WatchTimeouts
from kubetune.operator.store import Store


def pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": version,
                         "labels": {JOB_LABEL: "demo"}}}  # fmt: skip


class Response:
    """What `_preload_content=False` returns: `.data` for a list, `.stream()` for a watch."""

    def __init__(self, body: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None) -> None:
        self.data = json.dumps(body).encode() if body is not None else b""
        self.events = events or []

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        for event in self.events:
            yield json.dumps(event).encode() + b"\n"

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class ScriptedServer:
    """Answers list and watch calls from a script; records the calls' arguments."""

    def __init__(self, lists: list[Any], watches: list[list[dict[str, Any]]]) -> None:
        self.lists = lists
        self.watches = watches
        self.calls: list[dict[str, Any]] = []
        self.exhausted = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def __call__(self, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            if not self.watches:
                self.loop.call_soon_threadsafe(self.exhausted.set)
                raise ConnectionError("script over")
            return Response(events=self.watches.pop(0))
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Response(body=answer)


async def run_script(server: ScriptedServer, store: Store) -> list[str]:
    changed: list[str] = []
    informer = Informer(
        Source("pods", server, "ns", JOB_LABEL),
        store,
        lambda obj: changed.append(f"{obj['metadata']['name']}@{obj['metadata']['resourceVersion']}"),
        WatchTimeouts(server=60, client=90, request=5, retry=(5.0, 5.0)),
        asyncio.get_running_loop(),
    ).start()
    await asyncio.wait_for(server.exhausted.wait(), 5)
    await asyncio.sleep(0.05)  # the last batch posted to the loop
    informer.stop()
    return changed


async def test_list_then_watch_then_resume_from_the_last_version() -> None:
    server = ScriptedServer(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": [pod("a", "9")]}],
        watches=[
            [{"type": "ADDED", "object": pod("b", "11")}, {"type": "MODIFIED", "object": pod("a", "12")}],
            [{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}],
            [{"type": "DELETED", "object": pod("b", "21")}],
        ],
    )
    store = Store("pods")
    changed = await run_script(server, store)
    assert changed == ["a@9", "b@11", "a@12", "b@21"]
    assert [c.get("resource_version") for c in server.calls] == [None, "10", "12", "20", "21"]
    assert all(c.get("label_selector") == JOB_LABEL for c in server.calls)
    assert all(c.get("allow_watch_bookmarks") for c in server.calls if c.get("watch"))
    assert [name for _, name in store.object_keys()] == ["a"]


async def test_an_expired_watch_relists_and_drops_what_is_gone() -> None:
    server = ScriptedServer(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [pod("a", "9"), pod("b", "8")]},
            {"metadata": {"resourceVersion": "50"}, "items": [pod("a", "40"), pod("c", "45")]},
        ],
        watches=[
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}],
        ],
    )
    store = Store("pods")
    changed = await run_script(server, store)
    assert sorted(changed[2:]) == ["a@40", "b@8", "c@45"]  # after the re-list: a changed, c new, b gone
    assert sorted(name for _, name in store.object_keys()) == ["a", "c"]
    assert [c.get("watch", False) for c in server.calls] == [False, True, False, True]
    assert server.calls[-1]["resource_version"] == "50"


async def test_a_list_comes_in_pages_and_an_expired_continue_token_starts_it_again() -> None:
    from kubernetes.client.exceptions import ApiException

    def page(items: list[dict[str, Any]], version: str, token: str | None) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": version} | ({"continue": token} if token else {}), "items": items}

    server = ScriptedServer(
        lists=[
            page([pod("a", "1"), pod("b", "2")], "10", "t1"),
            ApiException(status=410, reason="Expired: the continue token is too old"),
            page([pod("a", "30"), pod("b", "2")], "40", "t2"),
            page([pod("c", "35")], "40", None),
        ],
        watches=[],
    )
    store = Store("pods")
    changed = await run_script(server, store)
    lists = [c for c in server.calls if not c.get("watch")]
    assert [c.get("_continue") for c in lists] == [None, "t1", None, "t2"], "the third call starts the list again"
    assert all(c["limit"] == WatchTimeouts().page_size for c in lists)
    assert sorted(changed) == ["a@30", "b@2", "c@35"], "the store is filled once, from the whole second list"
    assert sorted(name for _, name in store.object_keys()) == ["a", "b", "c"]
    assert server.calls[-1].get("watch") and server.calls[-1]["resource_version"] == "40"
