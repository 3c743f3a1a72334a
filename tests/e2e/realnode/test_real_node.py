"""Scenarios on the real node (issue 20): the project's own images as real pods under a real kubelet,
with no packet able to leave the machine (tests/support/realnode.py says how the node is made).

- The chart's operator Deployment runs in-cluster from the image `make images` built, under the chart's
  RBAC, its probes answered by the kubelet, reaching the API server through the `kubernetes` Service: two
  replicas, both ready, one leading (the Lease names its pod).
- A running pod's routes lead only to the pod subnet and the Service range; the host forwards nothing;
  a pod reaches the API server through its Service but no other service of the host (one listening on
  every address is dropped); the cluster DNS resolves the `kubernetes` Service and no name outside.
- A job whose trainer image is not on the node: the kubelet's pull goes to the loopback port every
  registry points at and is refused at once; the operator's startup deadline fails the job with
  ImagePullFailed, naming the image. (Training on real pods: test_training.py.)
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.e2e.realnode.cluster import (
    JOBS,
    claim,
    operator_pod,
    operator_pods,
    restricted_namespace,
    wait_operator,
)
from tests.support.builders import a_cpu_gang
from tests.support.chart import NAMESPACE
from tests.support.containment import route_breaches
from tests.support.kubeapi import KubeApi
from tests.support.realnode import RealNode
from tests.support.waiting import eventually

#: (The first test's time includes the session's set-up: the trainer image alone takes 80-90 s to import.)
pytestmark = pytest.mark.timeout(600)

#: An image no `make images` builds: never on the node, whatever else is.
MISSING_IMAGE = "ghcr.io/kubetune/trainer:not-on-this-node"


def test_the_operator_runs_in_cluster_from_its_image_under_the_charts_rbac(
    real_node: RealNode, admin: KubeApi, installed: list[dict[str, Any]]
) -> None:
    wait_operator(admin, installed)
    pod = operator_pod(admin)
    replicas = operator_pods(admin)
    assert len(replicas) == 2, "the chart runs two replicas: one leads, one stands by"
    for replica in replicas:  # both ready: the standby's /readyz answers 200 to the kubelet's probe
        container = replica["status"]["containerStatuses"][0]
        assert container["image"] == "ghcr.io/kubetune/operator:0.1.0" and container["ready"], container
        assert container["restartCount"] == 0, container
    account = next(o for o in installed if o["kind"] == "ServiceAccount")["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == account
    assert pod["status"]["podIP"].startswith("10.244.0.")
    # its log, through the API server and the kubelet (reached at the node's InternalIP, not by DNS)
    logs = real_node.control_plane.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"])
    assert logs.returncode == 0 and logs.stdout.strip(), logs.stderr


def test_a_running_pods_routes_lead_only_to_the_pod_and_service_networks(
    real_node: RealNode, admin: KubeApi, installed: list[dict[str, Any]]
) -> None:
    wait_operator(admin, installed)
    routes = real_node.pod_routes(NAMESPACE, operator_pod(admin)["metadata"]["name"])
    assert routes, "the pod has no route at all"
    assert route_breaches(routes, real_node.networks.allowed, "the operator") == []
    assert not any(route.get("dst") == "default" for route in routes)
    real_node.check_contained()  # the host still forwards nothing, with pods running


def test_a_job_whose_image_is_not_on_the_node_fails_with_a_clear_reason_and_nothing_is_pulled(
    real_node: RealNode, admin: KubeApi, installed: list[dict[str, Any]]
) -> None:
    wait_operator(admin, installed)
    namespace = "rn-missing-image"
    restricted_namespace(admin, namespace)
    for name in ("data", "ckpt"):
        claim(admin, real_node, namespace, name)
    job = a_cpu_gang("missing-image").retry(startup_timeout_seconds=10).build(validate=True)
    job["spec"]["image"] = MISSING_IMAGE
    code, body = admin.create(JOBS, namespace, job)
    assert code < 300, body

    def failed() -> dict[str, Any] | None:
        status = (admin.get(JOBS, namespace, "missing-image") or {}).get("status") or {}
        return status if status.get("phase") == "Failed" else None

    status = eventually(failed, 120, interval=0.5, message="the job to fail")
    condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "ImagePullFailed", condition
    assert MISSING_IMAGE in condition["message"], condition
    # the kubelet did try to pull it: from the loopback port every registry points at, refused at once
    events = admin.list("v1/events", namespace)
    pulls = [e["message"] for e in events if e.get("message", "").startswith("Failed to pull image")]
    assert pulls and all("127.0.0.1:9" in message for message in pulls), pulls
    real_node.check_contained()


PROBE = """
import json, socket, time
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "reached"
    except OSError as error:
        return type(error).__name__
def resolve(name, within=90):
    deadline = time.monotonic() + within
    while True:
        try:
            infos = socket.getaddrinfo(name, 443, family=socket.AF_INET, proto=socket.IPPROTO_TCP)
            return sorted({info[4][0] for info in infos})
        except OSError as error:
            failed = f"{type(error).__name__}: {error}"
        if time.monotonic() > deadline:
            return failed
        time.sleep(1)
print(json.dumps({"api": reach("10.96.0.1", 443), "host": reach(HOST, PORT),
                  "service": resolve("kubernetes.default.svc.cluster.local."), "outside": resolve("example.com.", 0)}))
"""


def test_a_pod_reaches_the_api_server_through_its_service_and_dns_and_nothing_else(
    real_node: RealNode, admin: KubeApi, installed: list[dict[str, Any]]
) -> None:
    namespace = "rn-reach"
    restricted_namespace(admin, namespace)
    with socket.socket() as listening:  # a service of the host, on every address (as the machine has some)
        listening.bind(("0.0.0.0", 0))
        listening.listen()
        port = listening.getsockname()[1]
        script = PROBE.replace("HOST", repr(real_node.networks.bridge_address)).replace("PORT", str(port))
        restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        pod = {
            "metadata": {"name": "reach"},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [
                    {
                        "name": "probe",
                        "image": "ghcr.io/kubetune/operator:0.1.0",
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", script],
                        "securityContext": restricted,
                    }
                ],
            },
        }
        code, body = admin.create("v1/pods", namespace, pod)
        assert code < 300, body

        def ended() -> str | None:
            phase = ((admin.get("v1/pods", namespace, "reach") or {}).get("status") or {}).get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        assert eventually(ended, 180, interval=0.5, message="the probe pod to end") == "Succeeded"
    logs = real_node.control_plane.kubectl("logs", "-n", namespace, "reach")
    # the cluster DNS answers for the cluster's names and for nothing outside it (no forwarding)
    # (Absolute names, IPv4 only; the Service's name asked again for up to 90 s: twice in about ten sessions
    # its lookups got no answer for 30 s, while the other name's were refused at once and every training
    # scenario's lookups answered. Cause not found yet: CoreDNS now logs every query, kept on failure.)
    probed = json.loads(logs.stdout)
    assert probed["outside"].startswith("gaierror"), probed
    assert {**probed, "outside": "gaierror"} == {
        "api": "reached", "host": "TimeoutError", "service": ["10.96.0.1"], "outside": "gaierror"
    }, probed  # fmt: skip
    real_node.check_contained()
