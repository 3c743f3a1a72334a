"""The real node's session (issue 20): a control plane of its own listening on the node's bridge address
(pods reach it through the `kubernetes` Service), one real node (tests/support/realnode.py) enforcing
NetworkPolicies (kube-network-policies, tests/support/netpolicy_agent.py; its log is kept), and kubetune
installed by its chart with the operator running in-cluster from its image, for this package's tests
only (torn down before the slow tier trains). Logs are kept in build/real-node-logs when a test failed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.operator.builders import TRAINER_UID
from tests.e2e.realnode.cluster import JOBS, claim, restricted_namespace, wait_operator
from tests.e2e.realnode.jobs import Inputs, RealJob, make_inputs
from tests.support import netpolicy_agent
from tests.support.builders import JobBuilder
from tests.support.chart import NAMESPACE, render
from tests.support.controlplane import ADMIN_TOKEN, ControlPlane
from tests.support.kubeapi import KubeApi
from tests.support.netpolicy_agent import NetworkPolicyAgent
from tests.support.nodeconfig import NodeNetworks
from tests.support.realnode import NODE_NAME, RealNode
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="package")
def real_node(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RealNode]:
    folder = tmp_path_factory.mktemp("real-node")
    plane = ControlPlane(folder / "control-plane", address=NodeNetworks().bridge_address)
    plane.folder.mkdir()
    node = RealNode(folder / "node", plane, images=("pause", "operator", "trainer"))
    node.preflight()
    missing = netpolicy_agent.preflight()
    if missing:
        raise RuntimeError("the real node's NetworkPolicy agent cannot start: " + "; ".join(missing))
    agent: NetworkPolicyAgent | None = None
    failed = True
    try:
        node.make_bridge()
        plane.start(crds=ROOT / "crds")
        node.start()
        # (made once the plane's CA exists)
        agent = NetworkPolicyAgent(folder / "netpol", plane, NODE_NAME, node.networks.pod_cidr)
        agent.start(node.folder / "logs")
        running = agent
        eventually(lambda: alive(running) and running.ready(), 60, interval=0.5, message="kube-network-policies' queue")
        failed = False
        yield node
    finally:
        try:
            if agent is not None:
                agent.stop()
            node.stop()
        finally:
            plane.stop()
            if failed or request.session.testsfailed:
                keep_logs(plane, node)


def alive(agent: NetworkPolicyAgent) -> bool:
    if agent.component is not None:
        agent.component.check_alive()  # RuntimeError with its log's tail
    return True


def keep_logs(plane: ControlPlane, node: RealNode) -> None:
    kept = ROOT / "build" / "real-node-logs"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for source, name in (
        (plane.folder / "logs", "control-plane"),
        (node.folder / "logs", "node"),
        (node.pod_logs, "pods"),
    ):
        if source.exists():
            shutil.copytree(source, kept / name)
    print(f"\nreal node logs kept in {kept}")


@pytest.fixture(scope="package")
def admin(real_node: RealNode) -> KubeApi:
    plane = real_node.control_plane
    return KubeApi(plane.url, ADMIN_TOKEN, plane.ca_file)


def not_ready_events(admin: KubeApi) -> dict[str, str]:
    """The node-lifecycle controller's NodeNotReady events (on the Node and on each of its pods), by uid."""
    events = admin.list("v1/events", None, fields="reason=NodeNotReady")
    return {e["metadata"]["uid"]: f"{described(e['involvedObject'])}: {e.get('message')}" for e in events}


def described(reference: dict[str, str]) -> str:
    return f"{reference.get('namespace', '')}/{reference['name']}"


@pytest.fixture(autouse=True)
def node_stays_ready(admin: KubeApi) -> Iterator[None]:
    """Each test fails if the node went NotReady during it: the node-lifecycle controller would have marked
    its pods not ready and tainted it, and the operator would take a worker still running for a lost one."""
    before = not_ready_events(admin)
    yield
    seen = [text for uid, text in not_ready_events(admin).items() if uid not in before]
    assert not seen, "the node went NotReady (its lease reached the control plane late):\n" + "\n".join(seen[:5])


@pytest.fixture(scope="package")
def installed(real_node: RealNode, admin: KubeApi, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """Every object the chart renders, applied as `helm install` would, the operator Deployment included."""
    code, body = admin.create("v1/namespaces", None, {"metadata": {"name": NAMESPACE}})
    assert code < 300, body
    objects = render()
    path = tmp_path_factory.mktemp("chart") / "chart.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    done = real_node.control_plane.kubectl("apply", "-n", NAMESPACE, "-f", str(path))
    assert done.returncode == 0, done.stderr
    return objects


@pytest.fixture(scope="package")
def inputs(real_node: RealNode) -> Inputs:
    return make_inputs(real_node)


@pytest.fixture
def submit(real_node: RealNode, admin: KubeApi, installed: list[dict[str, Any]], inputs: Inputs) -> Iterator[Any]:
    """Submit a job in a new restricted namespace with its `data` and `ckpt` claims; the job is deleted after."""
    wait_operator(admin, installed)
    made: list[RealJob] = []

    def submit(namespace: str, job: JobBuilder) -> RealJob:
        restricted_namespace(admin, namespace)
        claim(admin, real_node, namespace, "data", inputs.folder)
        checkpoints = claim(admin, real_node, namespace, "ckpt")
        os.chown(checkpoints, TRAINER_UID, TRAINER_UID)  # a hostPath volume is not re-owned by fsGroup
        code, body = admin.create(JOBS, namespace, job.build(validate=True))
        assert code < 300, body
        made.append(RealJob(admin, real_node, namespace, job.name, checkpoints))
        return made[-1]

    yield submit
    for job in made:
        admin.delete(JOBS, job.namespace, job.name)
