"""kubetune as the chart installs it, on a real API server with production admission plugins.

- every object the chart renders is accepted by the server;
- with the token of the chart's ServiceAccount (its RBAC the only permission) the operator can create
  a job's children, owner references with `blockOwnerDeletion` included (OwnerReferencesPermissionEnforcement
  needs `update` on `finetunejobs/finalizers` for that), and can read no Secret;
- the worker pods the operator builds pass the `restricted` Pod Security level, and a privileged pod
  is refused in the same namespace (the check can fail);
- a node whose heartbeat stops is marked NotReady and tainted by the node-lifecycle controller.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml

from kubetune.api.job import FineTuneJob
from kubetune.operator import builders
from kubetune.operator.kube import Kube, RetrySettings
from tests.e2e.node import NodeAgent
from tests.support.builders import a_job
from tests.support.chart import NAMESPACE as OPERATOR_NAMESPACE
from tests.support.chart import render
from tests.support.controlplane import ADMIN_TOKEN, NODE_MONITOR_GRACE_SECONDS, ControlPlane
from tests.support.kubeapi import KubeApi
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

JOBS = "kubetune.io/v1alpha1/finetunejobs"
TEAM = "installation-team"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> KubeApi:
    return KubeApi(control_plane.url, ADMIN_TOKEN, control_plane.ca_file)


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, admin: KubeApi) -> list[dict[str, Any]]:
    """The chart applied into its namespace (kubectl apply of Helm's rendering), and a team namespace."""
    for name, labels in ((OPERATOR_NAMESPACE, {}), (TEAM, RESTRICTED)):
        code, body = admin.create("v1/namespaces", None, {"metadata": {"name": name, "labels": labels}})
        assert code < 300 or code == 409, body
    # the priority classes the examples name, as a platform team defines them
    for name, value in (("training-high", 100000), ("training-low", 1000)):
        code, body = admin.create(
            "scheduling.k8s.io/v1/priorityclasses", None, {"metadata": {"name": name}, "value": value}
        )
        assert code < 300 or code == 409, body
    objects = render()
    done = control_plane.kubectl("apply", "-n", OPERATOR_NAMESPACE, "-f", "-", input=yaml.safe_dump_all(objects))
    assert done.returncode == 0, done.stderr
    return objects


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, installed: list[dict[str, Any]]) -> KubeApi:
    """The API as the operator sees it: the token of the chart's ServiceAccount."""
    account = next(o for o in installed if o["kind"] == "ServiceAccount")["metadata"]["name"]
    done = control_plane.kubectl("create", "token", account, "-n", OPERATOR_NAMESPACE)
    assert done.returncode == 0, done.stderr
    return KubeApi(control_plane.url, done.stdout.strip(), control_plane.ca_file)


def operator_kube(control_plane: ControlPlane, operator: KubeApi) -> Kube:
    """The operator's own API client (kube.py) with the chart's ServiceAccount token, no retries."""
    configuration = k8s.Configuration()
    configuration.host, configuration.ssl_ca_cert = control_plane.url, str(control_plane.ca_file)
    configuration.api_key, configuration.api_key_prefix = {"authorization": operator.token}, {"authorization": "Bearer"}
    return Kube(configuration, RetrySettings(attempts=1))


def test_every_chart_object_is_accepted(control_plane: ControlPlane, installed: list[dict[str, Any]]) -> None:
    for document in installed:
        kind, name = document["kind"], document["metadata"]["name"]
        namespace = (
            []
            if kind in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
            else ["-n", OPERATOR_NAMESPACE]
        )
        found = control_plane.kubectl("get", kind, name, *namespace, "-o", "name")
        assert found.returncode == 0, (kind, name, found.stderr)


async def test_the_operator_creates_a_jobs_children(
    control_plane: ControlPlane, admin: KubeApi, operator: KubeApi
) -> None:
    """Through the operator's own API client (kube.py), with the chart's ServiceAccount token."""
    manifest = a_job("children").build()
    code, body = admin.create(JOBS, TEAM, manifest)
    assert code == 201, body
    job = FineTuneJob.model_validate(body)
    kube = operator_kube(control_plane, operator)
    try:
        uid = job.metadata.uid or ""
        await kube.create_configmap(builders.build_configmap(job, manifest["spec"]), uid)
        await kube.create_service(builders.build_service(job), uid)
        pod = builders.build_worker_pod(job, 1, 0, builders.BuildSettings(trainer_image="kubetune/trainer:test"))
        await kube.create_pod(pod, uid)
        await kube.create_pod(pod, uid)  # "already exists", and this job's: success
    finally:
        kube.close()
    for resource in ("v1/configmaps", "v1/services", "v1/pods"):
        children = [c for c in admin.list(resource, TEAM) if c["metadata"].get("ownerReferences")]
        assert len(children) == 1, resource
        owner = children[0]["metadata"]["ownerReferences"][0]
        assert owner["blockOwnerDeletion"] and owner["uid"] == job.metadata.uid


async def test_a_pod_delete_names_the_pod_it_saw_and_leaves_a_namesake_alone(
    control_plane: ControlPlane, admin: KubeApi, operator: KubeApi
) -> None:
    """A deletion decided on a stale view (a lagging cache, a replica that lost its Lease) carries the uid it
    saw: the API server refuses it for a pod of the same name that is another one (kube.delete_pod)."""
    manifest = a_job("namesake").build()
    code, body = admin.create(JOBS, TEAM, manifest)
    assert code == 201, body
    job = FineTuneJob.model_validate(body)
    kube = operator_kube(control_plane, operator)
    try:
        pod = builders.build_worker_pod(job, 1, 0, builders.BuildSettings(trainer_image="kubetune/trainer:test"))
        created = await kube.create_pod(pod, job.metadata.uid or "")
        name = created["metadata"]["name"]
        assert await kube.delete_pod(TEAM, name, "uid-of-a-pod-seen-earlier") is None
        assert await kube.delete_pod_now(TEAM, name, "uid-of-a-pod-seen-earlier") is None
        assert (admin.get("v1/pods", TEAM, name) or {}).get("metadata", {}).get("uid") == created["metadata"]["uid"]
        assert await kube.delete_pod(TEAM, name, created["metadata"]["uid"]) is not None
        eventually(lambda: admin.get("v1/pods", TEAM, name) is None, 30, message="the pod it saw deleted")
        # a pod on a node that never confirms (lost): a force delete removes it at once, precondition and all
        pod["spec"]["nodeName"] = "a-node-that-never-answers"
        lost = await kube.create_pod(pod, job.metadata.uid or "")
        assert await kube.delete_pod_now(TEAM, name, lost["metadata"]["uid"]) is not None
        assert admin.get("v1/pods", TEAM, name) is None, "grace 0: gone without the kubelet's confirmation"
    finally:
        kube.close()


def test_the_operator_reads_no_secret(admin: KubeApi, operator: KubeApi) -> None:
    code, body = admin.create("v1/secrets", TEAM, {"metadata": {"name": "token"}, "stringData": {"token": "x"}})
    assert code in (201, 409), body
    assert operator.get("v1/secrets", TEAM, "token") is None
    code, _ = operator.request("GET", f"/api/v1/namespaces/{TEAM}/secrets")
    assert code == 403


@pytest.mark.parametrize("example", ["quickstart", "lora-early-stopping", "two-node-zero3"])
def test_worker_pods_pass_the_restricted_pod_security_level(admin: KubeApi, installed: Any, example: str) -> None:
    from tests.support.chart import ROOT

    document = yaml.safe_load((ROOT / "examples" / f"{example}.yaml").read_text())
    document["metadata"] |= {"namespace": TEAM, "uid": "00000000-0000-0000-0000-000000000001"}
    job = FineTuneJob.model_validate(document)
    pod = builders.build_worker_pod(job, 1, 0, builders.BuildSettings(trainer_image="kubetune/trainer:test"))
    pod["metadata"].pop("ownerReferences")  # the job itself is not created here
    code, body = admin.request("POST", f"/api/v1/namespaces/{TEAM}/pods?dryRun=All", pod)
    assert code == 201, body.get("message")


def test_a_baseline_pod_is_refused_in_the_same_namespace(admin: KubeApi, installed: Any) -> None:
    """The control for the test above: the namespace does enforce the level (a pod with no security
    context runs as the image's user, may escalate privileges and keeps its capabilities)."""
    pod = {"metadata": {"name": "baseline"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    code, body = admin.request("POST", f"/api/v1/namespaces/{TEAM}/pods?dryRun=All", pod)
    assert code == 403 and "restricted" in body["message"], body


@pytest.fixture
def node(admin: KubeApi) -> Iterator[NodeAgent]:
    agent = NodeAgent(admin, "heartbeat-test").start()
    try:
        yield agent
    finally:
        agent.stop()
        admin.delete("v1/nodes", None, "heartbeat-test")


def _ready(admin: KubeApi, name: str) -> tuple[str | None, list[str]]:
    found = admin.get("v1/nodes", None, name) or {}
    ready = next((c["status"] for c in found.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
    return ready, [t["key"] for t in found.get("spec", {}).get("taints") or []]


@pytest.mark.timeout(30 + 6 * NODE_MONITOR_GRACE_SECONDS)
def test_a_node_whose_heartbeat_stops_is_marked_not_ready_and_tainted(admin: KubeApi, node: NodeAgent) -> None:
    eventually(lambda: _ready(admin, node.name) == ("True", []), 30, message="the node to be Ready, untainted")
    node.stop_heartbeat()
    eventually(
        lambda: (
            _ready(admin, node.name)[0] == "Unknown" and "node.kubernetes.io/unreachable" in _ready(admin, node.name)[1]
        ),
        5 * NODE_MONITOR_GRACE_SECONDS,
        message=lambda: f"NotReady and the unreachable taint; now {_ready(admin, node.name)}",
    )
