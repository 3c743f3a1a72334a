"""What the real node's scenarios share: the operator Deployment's readiness, namespaces admitted under
Pod Security "restricted", and claims bound to hostPath volumes under the node's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.realcluster import RESTRICTED, bound_claim
from tests.support.chart import NAMESPACE
from tests.support.kubeapi import KubeApi
from tests.support.realnode import RealNode
from tests.support.waiting import eventually

JOBS = "kubetune.io/v1alpha1/finetunejobs"


def operator_pods(admin: KubeApi) -> list[dict[str, Any]]:
    return admin.list("v1/pods", NAMESPACE)


def operator_pod(admin: KubeApi) -> dict[str, Any]:
    """The replica that leads: its pod name starts the Lease's holder identity (`<pod>_<random>`)."""
    (lease,) = admin.list("coordination.k8s.io/v1/leases", NAMESPACE)
    holder = (lease.get("spec") or {}).get("holderIdentity") or ""
    leaders = [pod for pod in operator_pods(admin) if holder.startswith(pod["metadata"]["name"] + "_")]
    assert len(leaders) == 1, (holder, [p["metadata"]["name"] for p in operator_pods(admin)])
    return leaders[0]


def available(admin: KubeApi, installed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The operator Deployment once every replica is available (ready: the leader and the standby) and one leads."""
    name = next(o for o in installed if o["kind"] == "Deployment")["metadata"]["name"]
    deployment = admin.get("apps/v1/deployments", NAMESPACE, name) or {}
    wanted = deployment.get("spec", {}).get("replicas")
    if deployment.get("status", {}).get("availableReplicas") != wanted:
        return None
    lease = admin.get("coordination.k8s.io/v1/leases", NAMESPACE, name) or {}
    return deployment if (lease.get("spec") or {}).get("holderIdentity") else None


def wait_operator(admin: KubeApi, installed: list[dict[str, Any]]) -> None:
    eventually(lambda: available(admin, installed), 120, interval=0.5, message="the operator Deployment available")


def restricted_namespace(admin: KubeApi, namespace: str) -> None:
    code, body = admin.create("v1/namespaces", None, {"metadata": {"name": namespace, "labels": RESTRICTED}})
    assert code < 300, body


def claim(admin: KubeApi, real_node: RealNode, namespace: str, name: str, folder: Path | None = None) -> Path:
    """A claim bound to a hostPath volume of its own: `folder`, or a new one under the node's folder.
    Returns the folder."""
    folder = folder or real_node.folder / "volumes" / f"{namespace}-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for resource, ns, body in bound_claim(namespace, name, "ReadWriteMany", str(folder)):
        code, answer = admin.create(resource, ns, body)
        assert code < 300, answer
    return folder
