"""The brake on mass node loss on the real control plane (issue 27): both nodes' kubelets lose the API
server while their processes train on. The node lifecycle controller marks both Unknown and evicts
nothing (every node is down: it blames itself); the operator must not force-delete the gang either, but
hold it and say so, and the gang trains on, uncounted, once the nodes report again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kubetune.operator import metrics
from tests.e2e.conftest import NODES
from tests.e2e.jobs import Inputs, Job, a_scenario, make_inputs, submit
from tests.e2e.jobs import condition_in as condition
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.waiting import eventually

#: retryPolicy.nodeLostGraceSeconds of the scenario: without the brake, both workers are force-deleted
#: this long after their nodes go Unknown.
GRACE_SECONDS = 10
#: Long enough that the gang still trains when the nodes report again (about 30 s of training alone).
MAX_STEPS = 1200


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


def reasons(job: Job) -> list[tuple[str, str]]:
    return [(e.get("type", ""), e.get("reason", "")) for e in job.events()]


def unknown_since(cluster: RealCluster, node: str) -> datetime | None:
    """When the node lifecycle controller marked the node's Ready condition Unknown (None: not yet)."""
    conditions = ((cluster.api.get("v1/nodes", None, node) or {}).get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    if ready.get("status") != "Unknown":
        return None
    return datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00"))


def held(job: Job) -> dict[str, Any] | None:
    status = job.status()
    return status if condition(status, "NodeOutage").get("reason") == "MassNodeLoss" else None


@pytest.mark.timeout(300)
def test_18_every_node_silent_with_its_processes_running_holds_the_gang_and_it_trains_on(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, silenced: list[str]
) -> None:
    spec = (
        a_scenario("tiny", inputs)
        .hyperparameters({"maxSteps": MAX_STEPS, "epochs": 100})
        .retry({"maxRestarts": 0, "backoffSeconds": 0, "nodeLostGraceSeconds": GRACE_SECONDS})
    )
    job = submit(cluster, kubelet, "s18-node-outage", spec)
    pods = job.wait_running(attempt=1)
    job.wait_checkpoint(step=8)
    uids = sorted(p["metadata"]["uid"] for p in pods)
    assert sorted({p["spec"]["nodeName"] for p in pods}) == NODES, "a worker on each node"
    for node in NODES:
        silenced.append(node)
        kubelet.silence_node(node)

    status = eventually(lambda: held(job), 90, message="the job held with reason MassNodeLoss")
    assert "2 of 2 nodes are not Ready" in condition(status, "NodeOutage")["message"], status
    # Past the grace by the Nodes' own timestamps, then reconciled again: without the brake, the gang
    # would be gone by now.
    since = [eventually(lambda node=node: unknown_since(cluster, node), 30) for node in NODES]
    past = max(since) + timedelta(seconds=GRACE_SECONDS)
    eventually(lambda: datetime.now(UTC) > past, GRACE_SECONDS + 30, message="the grace to pass")
    seen = metrics.reconciles(job.namespace, job.name)
    eventually(lambda: metrics.reconciles(job.namespace, job.name) >= seen + 4, 30, message="4 more reconciles")
    status = job.status()
    assert sorted(p["metadata"]["uid"] for p in job.pods()) == uids, "no worker was deleted or replaced"
    assert not any(p["metadata"].get("deletionTimestamp") for p in job.pods()), job.pods()
    assert (status["phase"], status["attempt"], status["restarts"]) == ("Running", 1, 0), status
    assert condition(status, "NodeOutage")["status"] == "True", status
    assert ("Warning", "MassNodeLoss") in reasons(job) and ("Warning", "NodeLost") not in reasons(job)
    alive = kubelet.running()
    assert all((job.namespace, p["metadata"]["name"]) in alive for p in pods), "the processes ran on"

    for node in NODES:
        kubelet.resume_node(node)
    status = job.wait_phase("Succeeded", "Failed", timeout=200)
    assert status["phase"] == "Succeeded", status
    assert (status["attempt"], status["restarts"]) == (1, 0), "the outage cost no restart"
    assert status["progress"]["step"] == MAX_STEPS, status
    outage = condition(status, "NodeOutage")
    assert (outage["status"], outage["reason"]) == ("False", "NodeOutageOver"), status
    assert ("Normal", "NodeOutageOver") in reasons(job)
    names = [(job.namespace, p["metadata"]["name"]) for p in pods]
    eventually(lambda: not set(names) & set(kubelet.running()), 90, message="the gang's processes to end")
