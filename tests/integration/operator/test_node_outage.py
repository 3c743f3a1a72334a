"""The brake on mass node loss in the real operator: every node silent holds the gang (no pod deleted, the
reason in the status), nodes that report again let it train on (no restart); one silent node of three is
still a lost node. The Nodes and their Ready conditions are written here as the kubelets and the node
lifecycle controller would (the pods marked not Ready with them)."""

from __future__ import annotations

import datetime
from typing import Any

import kmock
import pytest

from kubetune.api.status import ConditionType, Reason
from tests.support.apiserver import Cluster
from tests.support.builders import a_cpu_gang
from tests.support.emulator import now_rfc3339
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.timeout(60)

#: Long past retryPolicy.nodeLostGraceSeconds (120 s by default): without the brake, the operator's very
#: first look at a silent node force-deletes its worker.
SILENT_FOR = datetime.timedelta(minutes=10)


def rfc3339(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_condition(status: str, since: str) -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": "Test", "lastTransitionTime": since}


async def add_node(cluster: Cluster, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    await cluster.request("POST", "/api/v1/nodes", body)
    await set_node(cluster, name, "True", now_rfc3339())


async def set_node(cluster: Cluster, name: str, ready: str, since: str) -> None:
    """The Node's Ready condition (the node lifecycle controller sets Unknown when the kubelet goes silent)."""
    await cluster.request(
        "PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [ready_condition(ready, since)]}}
    )


async def place(cluster: Cluster, pod: str, node: str) -> None:
    """The scheduler's binding, then the kubelet runs the trainer."""
    await cluster.request("PATCH", cluster._path("v1/pods", pod), {"spec": {"nodeName": node}})
    await cluster.kubelet_run(pod)


async def mark_pod_ready(cluster: Cluster, pod: str, ready: str) -> None:
    """What the node lifecycle controller (False) and the kubelet again (True) write on a pod."""
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()}
    await cluster.patch_pod_status(pod, {"conditions": [scheduled, ready_condition(ready, now_rfc3339())]})


def outage(cluster: Cluster, name: str) -> tuple[str, str] | None:
    found = [c for c in cluster.status(name).get("conditions") or [] if c["type"] == ConditionType.NODE_OUTAGE]
    return (found[0]["status"], found[0]["reason"]) if found else None


async def running_gang(cluster: Cluster, nodes: list[str]) -> list[str]:
    for node in nodes:
        await add_node(cluster, node)
    await cluster.create_job(a_cpu_gang("demo").build())
    pods = await eventually_async(lambda: len(cluster.pods("demo")) == 2 and cluster.pods("demo"))
    names = [pod["metadata"]["name"] for pod in pods]
    for pod, node in zip(names, nodes, strict=False):
        await place(cluster, pod, node)
    await eventually_async(lambda: cluster.status("demo").get("phase") == "Running")
    return names


def has_event(cluster: Cluster, type_: str, reason: str) -> bool:
    """Whether job demo has an Event of this type and reason (Events are posted after the status write)."""
    return (type_, reason) in [(e["type"], e["reason"]) for e in cluster.events("demo")]


async def test_every_node_silent_holds_the_gang_and_it_trains_on_when_they_return() -> None:
    async with Cluster() as cluster:
        nodes = ["node-a", "node-b"]
        pods = await running_gang(cluster, nodes)
        uids = [p["metadata"]["uid"] for p in cluster.pods("demo")]
        went_silent = rfc3339(datetime.datetime.now(datetime.UTC) - SILENT_FOR)
        for node in nodes:  # the controller marks every silent Node in one pass, then their pods
            await set_node(cluster, node, "Unknown", went_silent)
        for pod in pods:
            await mark_pod_ready(cluster, pod, "False")

        await eventually_async(lambda: outage(cluster, "demo") == ("True", Reason.MASS_NODE_LOSS))
        await cluster.reconciled("demo", times=3)  # each one past the grace by the Nodes' own timestamps
        status = cluster.status("demo")
        assert (status["phase"], status["attempt"], status["restarts"]) == ("Running", 1, 0)
        assert "node-a, node-b" in status["message"] and "2 of 2 nodes are not Ready" in status["message"]
        assert [p["metadata"]["uid"] for p in cluster.pods("demo")] == uids
        assert not any(p["metadata"].get("deletionTimestamp") for p in cluster.pods("demo"))
        await eventually_async(lambda: has_event(cluster, "Warning", Reason.MASS_NODE_LOSS))  # posted after the status
        assert not has_event(cluster, "Warning", Reason.NODE_LOST)

        for node, pod in zip(nodes, pods, strict=True):
            await set_node(cluster, node, "True", now_rfc3339())
            await mark_pod_ready(cluster, pod, "True")
        await eventually_async(lambda: outage(cluster, "demo") == ("False", Reason.NODE_OUTAGE_OVER))
        await eventually_async(lambda: cluster.status("demo")["message"] == "attempt 1: 2 worker(s) training")
        status = cluster.status("demo")
        assert (status["phase"], status["attempt"], status["restarts"]) == ("Running", 1, 0)
        assert [p["metadata"]["uid"] for p in cluster.pods("demo")] == uids
        await eventually_async(lambda: has_event(cluster, "Normal", Reason.NODE_OUTAGE_OVER))


async def test_one_silent_node_of_three_is_a_lost_node() -> None:
    async with Cluster() as cluster:
        pods = await running_gang(cluster, ["node-a", "node-b", "node-c"])
        went_silent = rfc3339(datetime.datetime.now(datetime.UTC) - SILENT_FOR)
        await set_node(cluster, "node-b", "Unknown", went_silent)
        await mark_pod_ready(cluster, pods[1], "False")
        await eventually_async(lambda: cluster.status("demo").get("attempt") == 2)
        status = cluster.status("demo")
        assert status["restarts"] == 0 and outage(cluster, "demo") is None
        await eventually_async(lambda: has_event(cluster, "Warning", Reason.NODE_LOST))


async def test_an_operator_that_may_not_list_nodes_runs_without_the_brake(caplog: pytest.LogCaptureFixture) -> None:
    async with Cluster(start_operator=False) as cluster:
        cluster.server["list", kmock.resource("v1/nodes")] << 403  # a chart older than the brake: get only
        await cluster.start_operator()
        nodes = ["node-a", "node-b"]
        pods = await running_gang(cluster, nodes)
        went_silent = rfc3339(datetime.datetime.now(datetime.UTC) - SILENT_FOR)
        for node in nodes:
            await set_node(cluster, node, "Unknown", went_silent)
        await mark_pod_ready(cluster, pods[0], "False")  # one suspect pod is enough: its Node is read by GET
        await eventually_async(lambda: cluster.status("demo").get("attempt") == 2)  # as before the brake
        assert cluster.status("demo")["restarts"] == 0 and outage(cluster, "demo") is None
        assert any(r.resource == kmock.resource("v1/nodes") and r.name == "node-a" for r in cluster.requests())
        assert "the brake on mass node loss is off" in caplog.text
