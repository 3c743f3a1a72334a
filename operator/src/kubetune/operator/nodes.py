"""The cluster's Nodes as the brake on mass node loss reads them: which are Ready, which run trainers.

The brake (kubetune.policies.mass_node_loss) decides from counts: how many of all Nodes, and of the
Nodes running kubetune's trainer pods, are not Ready. This module derives them from the caches (the
Node informer, caches.py, and the pod informer) and hands the policy its verdict, an `Outage`. It is
counted again when a Node changed, and when a pod did at most once per `RECOUNT_SECONDS`, not per
reconcile: counting 1,000 Nodes and 2,000 pods takes about 2.5 ms, and with 1,000 jobs every pod event
is a reconcile. A trainer's node a second late in the count changes nothing: a silent node takes the
node lifecycle controller 40 s or more to see.

Nodes are stored slimmed to their name and Ready condition (a Node's status lists its images and can
weigh tens of kilobytes; a thousand of them would dominate the operator's memory). Without permission to
list Nodes (a chart older than the brake) the Node informer never fills: `outage()` is then None, and
the operator handles every silent node as lost after the grace, as it did before the brake existed (it
logs why at start; caches.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubetune.operator.store import Store
from kubetune.policies.mass_node_loss import ClusterNodes, Outage, Readiness, Thresholds, assess

READY = "Ready"
#: Pod phases after which a pod runs nothing (its node no longer runs a trainer).
ENDED_PHASES = frozenset({"Succeeded", "Failed"})
#: Seconds a count stands when only pods changed since (see the module docstring).
RECOUNT_SECONDS = 1.0


def _ready_condition(node: Mapping[str, Any]) -> Mapping[str, Any] | None:
    conditions: Iterable[Mapping[str, Any]] = (node.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == READY), None)


def slim_node(node: dict[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a Node: its identity and its Ready condition."""
    metadata = node.get("metadata") or {}
    kept = {key: metadata[key] for key in ("name", "uid", "resourceVersion") if key in metadata}
    ready = _ready_condition(node)
    return {
        "apiVersion": node.get("apiVersion", "v1"),
        "kind": node.get("kind", "Node"),
        "metadata": kept,
        "status": {"conditions": [dict(ready)] if ready is not None else []},
    }


def is_ready(node: Mapping[str, Any]) -> bool:
    """Ready is True (NotReady, Unknown and no Ready condition at all count as not Ready, as for the
    node lifecycle controller)."""
    ready = _ready_condition(node)
    return ready is not None and ready.get("status") == "True"


def trainer_nodes(pods: Iterable[Mapping[str, Any]]) -> set[str]:
    """The nodes that run at least one trainer pod not yet ended."""
    return {
        node
        for pod in pods
        if (node := (pod.get("spec") or {}).get("nodeName"))
        and (pod.get("status") or {}).get("phase") not in ENDED_PHASES
    }


def cluster_nodes(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> ClusterNodes:
    """The counts the brake decides from (a trainer's node that is no longer listed is not counted: the
    pod garbage collector removes the pods of deleted Nodes)."""
    ready = {(node.get("metadata") or {}).get("name", ""): is_ready(node) for node in nodes}
    running = [ready[name] for name in trainer_nodes(pods) if name in ready]

    def count(states: list[bool]) -> Readiness:
        return Readiness(ready=sum(states), not_ready=len(states) - sum(states))

    return ClusterNodes(all=count(list(ready.values())), trainers=count(running))


class OutageView:
    """The current `Outage` from the Node and pod caches, counted again only when they changed."""

    def __init__(
        self, nodes: Store, pods: Store, thresholds: Thresholds, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.nodes = nodes
        self.pods = pods
        self.thresholds = thresholds
        self.clock = clock
        self._seen: tuple[int, int] | None = None
        self._counted_at = 0.0
        self._outage: Outage | None = None

    def outage(self, nodes_known: bool) -> Outage | None:
        """The outage; None when the Nodes are not known (`nodes_known` False: the Node informer has not
        listed, for lack of permission or not yet)."""
        if not nodes_known:
            return None
        revisions, now = (self.nodes.revision, self.pods.revision), self.clock()
        nodes_changed = self._seen is None or self._seen[0] != revisions[0]
        pods_due = self._seen != revisions and now - self._counted_at >= RECOUNT_SECONDS
        if nodes_changed or pods_due:
            found = cluster_nodes(self.nodes.objects(), self.pods.objects())
            self._outage, self._seen, self._counted_at = assess(found, self.thresholds), revisions, now
        return self._outage
