"""The real node's session (issue 20): a control plane of its own listening on the node's bridge address
(pods reach it through the `kubernetes` Service), one real node (tests/support/realnode.py), and kubetune
installed by its chart with the operator running in-cluster from its image, for this package's tests
only (torn down before the slow tier trains). Logs are kept in build/real-node-logs when a test failed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.chart import NAMESPACE, render
from tests.support.controlplane import ADMIN_TOKEN, ControlPlane
from tests.support.kubeapi import KubeApi
from tests.support.nodeconfig import NodeNetworks
from tests.support.realnode import RealNode

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="package")
def real_node(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RealNode]:
    folder = tmp_path_factory.mktemp("real-node")
    plane = ControlPlane(folder / "control-plane", address=NodeNetworks().bridge_address)
    plane.folder.mkdir()
    node = RealNode(folder / "node", plane, images=("pause", "operator", "trainer"))
    node.preflight()
    failed = True
    try:
        node.make_bridge()
        plane.start(crds=ROOT / "crds")
        node.start()
        failed = False
        yield node
    finally:
        try:
            node.stop()
        finally:
            plane.stop()
            if failed or request.session.testsfailed:
                keep_logs(plane, node)


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
