"""The process kubelet against hand-made pods: what it reports must be what a real kubelet reports,
because the operator classifies failures from exactly these fields. Small shell/Python commands stand in
for the trainer, so each test takes about a second."""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.node import ScheduledKubelet
from tests.e2e.podexec import Network, PathMap, expand, pod_ip, rewrite
from tests.e2e.realcluster import RealCluster
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(60)]

PODS = "v1/pods"
NS = "kubelet-tests"


@pytest.fixture(scope="module", autouse=True)
def namespace(cluster: RealCluster) -> str:
    """Hand-made pods run as the image's user: a namespace without the `restricted` level; their claims."""
    cluster.ensure_namespace(NS, restricted=False)
    for claim in ("keep", "data"):
        cluster.ensure_claim(NS, claim)
    return NS


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A pod whose one container runs `python -c script`."""
    container = {"name": "main", "image": "test", "command": [sys.executable, "-c", script]}
    container |= spec.pop("container", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "kubelet-test", "role": name}},
        # no service-account token volume, as on kubetune's trainer pods (the process kubelet mounts none)
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False, "containers": [container], **spec},
    }


def terminated(cluster: RealCluster, name: str, namespace: str = NS) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        for item in cluster.objects(PODS, namespace):
            if item["metadata"]["name"] == name:
                statuses = item.get("status", {}).get("containerStatuses") or [{}]
                state = statuses[0].get("state", {})
                return item if "terminated" in state else None
        return None

    found: dict[str, Any] = eventually(check, 30, message=f"pod {name} to terminate")
    return found


def state_of(item: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = item["status"]["containerStatuses"][0]["state"]["terminated"]
    return result


def gone(cluster: RealCluster, name: str, namespace: str = NS) -> bool:
    return all(item["metadata"]["name"] != name for item in cluster.objects(PODS, namespace))


def test_environment_volumes_and_termination_message(cluster: RealCluster, kubelet: ScheduledKubelet) -> None:
    cluster.create("v1/configmaps", NS, {"metadata": {"name": "cfg"}, "data": {"job.yaml": "hello", "K": "v"}})
    script = """
import json, os, sys
out = {k: os.environ.get(k) for k in ("POD", "NSP", "IDX", "FROM_CM", "BOTH", "HOSTNAME", "IP", "ROOT")}
out["config"] = open(os.environ["ROOT"] + "/../../etc/cfg/job.yaml").read()
out["arg"] = sys.argv[1]
open(sys.argv[2], "w").write(json.dumps(out))
sys.exit(3)
"""
    spec = {
        "hostname": "h0",
        "subdomain": "grp",
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        ],
        "container": {
            "args": ["$(POD)-x", "/dev/termination-log"],
            "terminationMessagePath": "/dev/termination-log",
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "data", "mountPath": "/mnt/pvc/data"},
            ],
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NSP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "IDX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['role']"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "K"}}},
                {"name": "BOTH", "value": "$(POD)/$(NSP)/$$(POD)"},
                {"name": "ROOT", "value": "/mnt/pvc"},
            ],
        },
    }
    cluster.create(PODS, NS, pod("envtest", script, **spec))
    item = terminated(cluster, "envtest")
    state = state_of(item)
    assert item["status"]["phase"] == "Failed"
    assert state["exitCode"] == 3 and state["reason"] == "Error"
    reported = json.loads(state["message"])
    assert reported["POD"] == "envtest" and reported["NSP"] == NS and reported["IDX"] == "envtest"
    assert reported["FROM_CM"] == "v" and reported["BOTH"] == f"envtest/{NS}/$(POD)"
    assert reported["HOSTNAME"] == "h0" and reported["IP"] == pod_ip(NS, "h0", "grp", "envtest")
    assert reported["arg"] == "envtest-x" and reported["config"] == "hello"
    assert reported["ROOT"].endswith("/rootfs/mnt/pvc")  # a parent of a mount is rewritten too
    assert item["spec"]["nodeName"] in kubelet.nodes and item["status"]["podIP"] == reported["IP"]


def test_claims_outlive_pods_and_success_is_completed(cluster: RealCluster, kubelet: ScheduledKubelet) -> None:
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "keep"}}]
    mounts = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    write = "open('/data/x'.replace('/data', __import__('sys').argv[1]), 'w').write('kept')"
    cluster.create(PODS, NS, pod("writer", write, volumes=volumes, container={**mounts, "args": ["/data"]}))
    assert state_of(terminated(cluster, "writer"))["reason"] == "Completed"
    read = "import sys; print(open(sys.argv[1] + '/x').read()); open(sys.argv[2], 'w').write('read')"
    args = {**mounts, "args": ["/data", "/dev/termination-log"]}
    cluster.create(PODS, NS, pod("reader", read, volumes=volumes, container=args))
    item = terminated(cluster, "reader")
    assert item["status"]["phase"] == "Succeeded" and state_of(item)["exitCode"] == 0
    assert "kept" in kubelet.log(NS, "reader")
    assert (kubelet.claim_dir(NS, "keep") / "x").read_text() == "kept"


def test_service_dns_names_and_ports_reach_the_right_pod(cluster: RealCluster, kubelet: ScheduledKubelet) -> None:
    server = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen()
for _ in range(2):
    c, _ = s.accept(); c.sendall(b"pong"); c.close()
"""
    client = """
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
for _ in range(100):
    try:
        c = socket.create_connection((host, int(port))); break
    except OSError:
        time.sleep(0.1)
open("/dev/termination-log".replace("/dev", sys.argv[2]), "w").write(c.recv(4).decode())
"""
    ports = [{"name": "rdzv", "containerPort": 29500}]
    common = {"subdomain": "svc", "container": {"ports": ports}}
    cluster.create(
        PODS, NS, pod("w0", server, hostname="j-w0", **common | {"container": {"ports": ports, "args": ["29500"]}})
    )
    target = f"j-w0.svc.{NS}.svc:29500"
    cluster.create(
        PODS,
        NS,
        pod("w1", client, hostname="j-w1", **common | {"container": {"ports": ports, "args": [target, "/dev"]}}),
    )
    assert state_of(terminated(cluster, "w1"))["message"] == "pong"
    # the pod IP answers on the declared port, as the operator expects for /progress
    ip = pod_ip(NS, "j-w0", "svc", "w0")
    with socket.create_connection((ip, 29500), timeout=5) as connection:
        assert connection.recv(4) == b"pong"
    assert state_of(terminated(cluster, "w0"))["exitCode"] == 0


def test_graceful_deletion_sends_sigterm_then_removes_the_pod(cluster: RealCluster, kubelet: ScheduledKubelet) -> None:
    script = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "w").write("checkpointed"); sys.exit(8)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""
    cluster.create(PODS, NS, pod("graceful", script, container={"args": ["/dev/termination-log"]}))
    # deleted only once its handler is in place (a SIGTERM before that would end it with 143)
    eventually(lambda: "ready" in kubelet.log(NS, "graceful"), 20, message="the pod to run its handler")
    cluster.delete(PODS, NS, "graceful")
    eventually(lambda: gone(cluster, "graceful"), 20, message="the pod to be removed")
    assert (NS, "graceful", "exited 8") in kubelet.history, [h for h in kubelet.history if h[0] == NS]


def test_grace_period_ends_with_sigkill(cluster: RealCluster, kubelet: ScheduledKubelet) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    cluster.create(PODS, NS, pod("stubborn", script, terminationGracePeriodSeconds=1))
    eventually(lambda: "ready" in kubelet.log(NS, "stubborn"), 20, message="the pod to ignore SIGTERM")
    cluster.delete(PODS, NS, "stubborn")
    eventually(lambda: gone(cluster, "stubborn"), 20, message="the pod to be removed")
    assert (NS, "stubborn", f"exited {128 + signal.SIGKILL}") in kubelet.history


def test_oom_hook_reports_oomkilled_and_kept_conditions(cluster: RealCluster, kubelet: ScheduledKubelet) -> None:
    cluster.create(PODS, NS, pod("hungry", "import time; time.sleep(60)"))
    eventually(lambda: (NS, "hungry") in kubelet.running(), 20, message="the pod to run")
    extra = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    live = next(p for p in cluster.objects(PODS, NS) if p["metadata"]["name"] == "hungry")
    cluster.patch(PODS, NS, "hungry", {"status": {"conditions": [*live["status"]["conditions"], extra]}}, "status")
    kubelet.oom_kill(NS, "hungry")
    item = terminated(cluster, "hungry")
    assert state_of(item)["reason"] == "OOMKilled" and state_of(item)["exitCode"] == 137
    assert any(c["type"] == "DisruptionTarget" for c in item["status"]["conditions"])


def test_missing_configmap_waits_then_starts(cluster: RealCluster, kubelet: ScheduledKubelet) -> None:
    env = [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "x"}}}]
    script = "import os, sys; sys.exit(0 if os.environ['X'] == 'ok' else 1)"
    cluster.create(PODS, NS, pod("waiter", script, container={"env": env}))

    def waiting() -> bool:
        items = [p for p in cluster.objects(PODS, NS) if p["metadata"]["name"] == "waiter"]
        statuses = (items[0].get("status") or {}).get("containerStatuses") if items else None
        return bool(statuses) and statuses[0]["state"].get("waiting", {}).get("reason") == "CreateContainerConfigError"

    eventually(waiting, 20, message="CreateContainerConfigError")
    cluster.create("v1/configmaps", NS, {"metadata": {"name": "late"}, "data": {"x": "ok"}})
    assert state_of(terminated(cluster, "waiter"))["exitCode"] == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("--master_addr=a-w0.a.ns.svc", "--master_addr=IP"),
        ("a-w0.a.ns.svc.cluster.local:29500", "IP:40000"),
        ("a-w0.a", "IP"),  # own subdomain, namespace from the search path
        ("a-w0.other", "a-w0.other"),  # not this pod's subdomain: left alone
        ("29500", "40000"),
        ("--nnodes=2", "--nnodes=2"),
        ("example.com:443", "example.com:443"),
        ("/mnt/pvc/data/x", "/ROOT/mnt/pvc/data/x"),
        ("/mnt/pvc", "/ROOT/mnt/pvc"),
        ("/dev/null", "/dev/null"),
    ],
)
def test_rewrite(value: str, expected: str) -> None:
    network = Network(namespace="ns", ip="127.0.0.9", subdomain="a", ports={29500: 40000})
    paths = PathMap(Path("/ROOT"), ["/mnt/pvc/data"])
    assert rewrite(value, paths, network) == expected.replace("IP", pod_ip("ns", "a-w0", "a", ""))


def test_expand() -> None:
    assert expand("$(A)-$(B)-$$(A)-$(", {"A": "1"}) == "1-$(B)-$(A)-$("
