"""Deadlines that know why, in the real operator: a worker waiting for a volume still attached to another
node (the attach-detach controller's Multi-Attach Event, which the operator reads for a worker stuck in
ContainerCreating) waits past `retryPolicy.startupTimeoutSeconds` under the reason VolumeStillAttached;
a gang relaunched after a preemption waits unschedulable past `schedulingTimeoutSeconds` as Preempted.
Pod statuses and Events are written here as the kubelet, the scheduler and the controller-manager would."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kubetune.api.status import Reason
from tests.support.apiserver import Cluster
from tests.support.builders import a_cpu_gang
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.timeout(60)

MULTI_ATTACH = 'Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node'
#: Past the default retryPolicy.startupTimeoutSeconds (300 s) and schedulingTimeoutSeconds (600 s), short of
#: the Multi-Attach bound (600 s): without their cause, the operator's first look would fail the job.
WAITED = datetime.timedelta(seconds=450)
UNSCHEDULABLE_FOR = datetime.timedelta(hours=2)


def rfc3339(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(delta: datetime.timedelta) -> str:
    return rfc3339(datetime.datetime.now(datetime.UTC) - delta)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


async def attach_refused(cluster: Cluster, pod: dict[str, Any]) -> None:
    """The attach-detach controller's Event on a pod whose ReadWriteOnce volume is attached elsewhere."""
    meta = pod["metadata"]
    involved = {"kind": "Pod", "namespace": cluster.namespace, "name": meta["name"], "uid": meta["uid"]}
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.multi-attach", "namespace": cluster.namespace},
        "involvedObject": involved,
        "reason": "FailedAttachVolume",
        "message": MULTI_ATTACH,
        "type": "Warning",
        "source": {"component": "attachdetach-controller"},
        "lastTimestamp": ago(datetime.timedelta(seconds=1)),
    }
    await cluster.request("POST", cluster._path("v1/events"), event)


async def test_a_worker_waiting_for_a_volume_attached_elsewhere_waits_with_the_reason() -> None:
    async with Cluster() as cluster:
        await cluster.create_job(a_cpu_gang("demo").build())
        pods = await eventually_async(lambda: len(cluster.pods("demo")) == 2 and cluster.pods("demo"))
        await attach_refused(cluster, pods[1])
        for pod in pods:
            await cluster.request(
                "PATCH", cluster._path("v1/pods", pod["metadata"]["name"]), {"spec": {"nodeName": "n"}}
            )
        await cluster.kubelet_run(pods[0]["metadata"]["name"])
        await cluster.kubelet_waiting(pods[1]["metadata"]["name"], "ContainerCreating", ago(WAITED))
        events = await eventually_async(
            lambda: [e for e in cluster.events("demo") if e["reason"] == Reason.VOLUME_STILL_ATTACHED]
        )
        assert MULTI_ATTACH in events[0]["message"] and events[0]["type"] == "Warning"
        await cluster.reconciled("demo", times=2)  # two more looks: still waiting, not ContainerCreatingTimeout
        status = cluster.status("demo")
        assert status["phase"] == "Pending" and MULTI_ATTACH in status["message"]
        assert [p["metadata"]["name"] for p in cluster.pods("demo")] == ["demo-a1-w0", "demo-a1-w1"]


async def test_a_relaunch_after_a_preemption_waits_unschedulable_as_preempted_then_runs() -> None:
    async with Cluster() as cluster:
        await cluster.create_job(a_cpu_gang("demo").build())
        pods = await eventually_async(lambda: len(cluster.pods("demo")) == 2 and cluster.pods("demo"))
        for pod in pods:
            await cluster.kubelet_run(pod["metadata"]["name"])
        await eventually_async(lambda: cluster.status("demo").get("phase") == "Running")
        await cluster.kubelet_disrupt("demo-a1-w1")  # DisruptionTarget PreemptionByScheduler
        relaunched = await eventually_async(lambda: len(cluster.pods("demo", attempt=2)) == 2)
        assert relaunched
        assert condition(cluster.status("demo"), "Restarting")["reason"] == Reason.PREEMPTED
        await cluster.kubelet_run("demo-a2-w0")
        unschedulable = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
            "lastTransitionTime": ago(UNSCHEDULABLE_FOR),
        }
        await cluster.patch_pod_status("demo-a2-w1", {"phase": "Pending", "conditions": [unschedulable]})
        await eventually_async(lambda: [e for e in cluster.events("demo") if e["reason"] == Reason.PREEMPTED])
        await cluster.reconciled("demo", times=2)  # two more looks, hours past schedulingTimeoutSeconds
        status = cluster.status("demo")
        assert status["phase"] == "Pending" and condition(status, "Running")["reason"] == Reason.PREEMPTED
        assert "higher-priority" in status["message"]
        await cluster.kubelet_run("demo-a2-w1")  # the capacity came back
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Running" and cluster.status("demo")
        )
        assert (status["attempt"], status["restarts"]) == (2, 0)
        assert condition(status, "Restarting")["status"] == "False"
