"""The brake's input from the caches: Nodes slimmed to their Ready condition, the counts over all Nodes and
the trainers' Nodes, recomputed only on a change; and an operator that may not list Nodes starts anyway."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kubetune.operator import caches as caches_module
from kubetune.operator.builders import JOB_LABEL
from kubetune.operator.caches import Caches
from kubetune.operator.informer import Informer, Source, WatchTimeouts
from kubetune.operator.nodes import OutageView, cluster_nodes, is_ready, slim_node
from kubetune.operator.store import Store, by_namespace
from kubetune.policies.mass_node_loss import Readiness, Thresholds

pytestmark = pytest.mark.timeout(10)


def node(name: str, ready: str | None = "True", version: str = "1") -> dict[str, Any]:
    conditions = [{"type": "MemoryPressure", "status": "False"}]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": name, "resourceVersion": version, "labels": {"zone": "a"}},
        "status": {"conditions": conditions, "images": [{"names": ["big"], "sizeBytes": 1}]},
    }


def pod(name: str, on: str | None, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "resourceVersion": "1",
                     "labels": {JOB_LABEL: "demo"}},
        "spec": {"nodeName": on} if on else {},
        "status": {"phase": phase},
    }  # fmt: skip


def test_a_node_is_kept_as_its_name_and_ready_condition() -> None:
    slim = slim_node(node("a", "Unknown"))
    assert slim["metadata"] == {"name": "a", "uid": "a", "resourceVersion": "1"}
    assert [c["type"] for c in slim["status"]["conditions"]] == ["Ready"] and not is_ready(slim)
    assert is_ready(slim_node(node("b"))) and not is_ready(slim_node(node("c", None)))


def test_the_counts_cover_all_nodes_and_the_nodes_running_trainers() -> None:
    nodes = [node("a", "Unknown"), node("b", "False"), node("c"), node("d")]
    pods = [
        pod("w0", "a"),
        pod("w1", "c"),
        pod("done", "b", phase="Succeeded"),  # ended: its node runs no trainer
        pod("pending", None),  # not placed
        pod("orphan", "gone"),  # its Node was deleted
    ]
    counted = cluster_nodes(nodes, pods)
    assert counted.all == Readiness(ready=2, not_ready=2)
    assert counted.trainers == Readiness(ready=1, not_ready=1)


def test_the_outage_is_none_until_nodes_are_known_and_counted_again_only_on_a_change() -> None:
    nodes, pods = Store("nodes", by_namespace, shape=slim_node), Store("pods")
    clock = [100.0]
    view = OutageView(nodes, pods, Thresholds(), clock=lambda: clock[0])
    assert view.outage(nodes_known=False) is None
    for name in ("a", "b"):
        nodes.upsert(node(name, "Unknown"))
        pods.upsert(pod(f"w-{name}", name))
    first = view.outage(nodes_known=True)
    assert first is not None and first.mass
    assert view.outage(nodes_known=True) is first, "nothing changed: not counted again"
    pods.upsert(pod("w-c", "c"))
    assert view.outage(nodes_known=True) is first, "only a pod changed, within RECOUNT_SECONDS"
    clock[0] += 1.0
    later = view.outage(nodes_known=True)
    assert later is not first and later is not None and later.mass
    nodes.upsert(node("a", "True", version="2"))
    again = view.outage(nodes_known=True)
    assert again is not None and not again.mass and "1 of 2 nodes are not Ready" in again.summary


def informer(kind: str, loop: asyncio.AbstractEventLoop) -> Informer:
    return Informer(Source(kind, lambda **_: None), Store(kind), lambda _: None, WatchTimeouts(), loop)


async def test_an_operator_that_cannot_list_nodes_starts_without_the_brake(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(caches_module, "OPTIONAL_SYNC_SECONDS", 0.05)
    loop = asyncio.get_running_loop()
    caches = Caches()
    pods, nodes = informer("pods", loop), informer("nodes", loop)
    caches.informers += [pods, nodes]
    pods.synced.set()  # listed; the Nodes never are (403)
    with caplog.at_level(logging.WARNING):
        assert await caches.wait_synced(timeout=5.0) == []
    assert not caches.synced("nodes") and caches.synced("pods")
    assert "brake on mass node loss is off" in caplog.text
    late = Caches()
    late.informers += [informer("pods", loop), informer("nodes", loop)]
    assert await late.wait_synced(timeout=0.05) == ["pods"], "a kind the operator needs still stops it"
