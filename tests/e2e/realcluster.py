"""The end-to-end tier's cluster: the real control plane, the chart installed, the operator under the
chart's RBAC, and a fault proxy in front of it — behind the facade the scenarios use.

- The control plane is tests/support/controlplane.py (etcd, kube-apiserver with production admission
  plugins, controller-manager, scheduler), built from the Kubernetes Go modules.
- The CRD is applied from crds/ with `kubectl apply` and default validation; the chart is rendered with
  Helm's engine (tests/support/chart.py) and every object it renders is applied and must be accepted.
  The chart's Deployment is applied with 0 replicas: the operator runs in the test process instead (so
  that a test can stop, restart or replace it), with the token of the chart's ServiceAccount — the
  chart's RBAC is its only permission.
- The operator talks to the API server through `FaultProxy` (tests/support/faultproxy.py), which lets a
  scenario make the server refuse the next creates or updates.
- Every namespace a scenario uses enforces the `restricted` Pod Security level; checkpoint claims are
  real PersistentVolumeClaims bound to PersistentVolumes by the controller-manager (the process kubelet
  maps each claim to a folder on this machine).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import yaml

from kubetune.operator.network_policy import GangNetwork, parse_gang_network
from kubetune.operator.settings import OperatorSettings
from tests.support.apiserver import JOBS, PODS, OperatorThread, fast_settings
from tests.support.chart import NAMESPACE as OPERATOR_NAMESPACE
from tests.support.chart import of_kind, render
from tests.support.controlplane import ADMIN_TOKEN, ControlPlane, kubeconfig
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.kubeapi import KubeApi, api_path
from tests.support.ports import free_port

__all__ = ["JOBS", "PODS", "Fault", "RealCluster"]

NAMESPACES = "v1/namespaces"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def bound_claim(
    namespace: str, claim: str, access_mode: str, host_path: str
) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(resource, namespace, body) of a claim bound to a hostPath PersistentVolume of its own, named
    `<namespace>-<claim>`, in the order to create them."""
    volume = f"{namespace}-{claim}"
    spec = {"accessModes": [access_mode], "storageClassName": "kubetune-test"}
    pv = {
        "metadata": {"name": volume},
        "spec": spec | {"capacity": {"storage": "1Gi"}, "hostPath": {"path": host_path},
                        "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": namespace, "name": claim}},
    }  # fmt: skip
    pvc = {
        "metadata": {"name": claim},
        "spec": spec | {"volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}},
    }
    return [("v1/persistentvolumes", None, pv), ("v1/persistentvolumeclaims", namespace, pvc)]


def operator_settings() -> OperatorSettings:
    """The in-process operator's settings: the tests' short timers, and a bound on unreachable progress
    (30 s) and a handover of rank 0's whole result (40 s) short enough for a scenario to see both, yet
    longer than a trainer here takes to start serving (8-10 s alone, measured up to 23 s while other
    tests load the two cores). Each attempt gets its NetworkPolicy as the chart's flag asks (created under
    the chart's RBAC; the process kubelet enforces none: tests/e2e/realnode/test_network_policy.py does)."""
    return fast_settings(
        progress_unreachable_after=30.0,
        result_handover_seconds=40.0,
        gang_network=chart_gang_network(),
        health_port=free_port(),  # kopf's /healthz, which the chart's probes ask (test_hostile_rank_zero.py)
    )


def chart_gang_network() -> GangNetwork:
    """The chart's `--gang-network-policy` flag as settings, the operator in the chart's namespace."""
    (deployment,) = of_kind(render(), "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    flag = next(arg for arg in args if arg.startswith("--gang-network-policy="))
    return parse_gang_network(flag.partition("=")[2], OPERATOR_NAMESPACE)


class RealCluster:
    """The control plane with kubetune installed by its chart, and a synchronous facade for tests."""

    def __init__(self, control_plane: ControlPlane, folder: Path) -> None:
        self.folder = folder
        self.control_plane = control_plane
        self.admin: KubeApi | None = None
        self.server: FaultProxy | None = None
        self.operator: OperatorThread | None = None
        self.settings = operator_settings()
        self.operator_token = ""
        self._namespaces: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> RealCluster:
        """Install kubetune on the control plane (its CRD is applied already) and start the operator."""
        plane = self.control_plane
        self.admin = KubeApi(plane.url, ADMIN_TOKEN, plane.ca_file)
        self.install_chart()
        self.server = FaultProxy(plane.url, plane.ca_file).start()
        self.start_operator()
        return self

    def stop(self) -> None:
        try:
            self.stop_operator()
        finally:
            if self.server is not None:
                self.server.stop()

    def install_chart(self) -> None:
        """Every object the chart renders, applied as `helm install` would; the operator's token."""
        self.ensure_namespace(OPERATOR_NAMESPACE, restricted=False)
        objects = render()
        for document in objects:
            if document["kind"] == "Deployment":
                document["spec"]["replicas"] = 0  # the operator runs in the test process (module docstring)
        path = self.folder / "chart.yaml"
        path.write_text(yaml.safe_dump_all(objects))
        self.kubectl_ok("apply", "-n", OPERATOR_NAMESPACE, "-f", str(path))
        account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
        token = self.kubectl_ok("create", "token", account, "-n", OPERATOR_NAMESPACE, "--duration=24h")
        self.operator_token = token.strip()

    def operator_configuration(self) -> k8s.Configuration:
        """The kubernetes client's configuration of the operator: the proxy, the chart's ServiceAccount."""
        assert self.server is not None
        configuration = k8s.Configuration()
        configuration.host = self.server.url
        configuration.api_key = {"authorization": self.operator_token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return configuration

    def operator_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for `kubetune operator` run as a process, with the same identity and proxy."""
        assert self.server is not None
        config = kubeconfig(self.server.url, self.control_plane.ca_file, self.operator_token)
        del config["clusters"][0]["cluster"]["certificate-authority"]  # the proxy speaks plain HTTP on loopback
        path.write_text(yaml.safe_dump(config))
        return path

    def inject(self, fault: Fault) -> Fault:
        """Make the API server (as the operator sees it) answer the next matching requests with a fault."""
        assert self.server is not None, "the cluster is not started"
        return self.server.inject(fault)

    def start_operator(self, settings: OperatorSettings | None = None) -> None:
        """The in-process operator, with `operator_settings()` unless told (tests/e2e/test_kueue.py: `kueue`)."""
        self.settings = settings or operator_settings()
        self.operator = OperatorThread(self.settings, self.operator_configuration(), None)
        asyncio.run(self.operator.start(timeout=60))

    @property
    def health_url(self) -> str:
        """The running operator's liveness endpoint (kopf's), as the chart's probes ask it."""
        assert self.settings.health_port, "the operator serves no health endpoint"
        return f"http://127.0.0.1:{self.settings.health_port}/healthz"

    def stop_operator(self) -> None:
        if self.operator is not None:
            operator, self.operator = self.operator, None
            asyncio.run(operator.stop(timeout=60))

    def restart_operator(self) -> None:
        self.stop_operator()
        self.start_operator()

    # -- kubectl -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.control_plane.url

    def kubectl_ok(self, *args: str, input: str | None = None) -> str:
        done = self.control_plane.kubectl(*args, input=input)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    # -- namespaces and claims -----------------------------------------------------------------------

    def ensure_namespace(self, namespace: str, restricted: bool = True) -> None:
        if namespace in self._namespaces:
            return
        labels = RESTRICTED if restricted else {}
        code, body = self.api.create(NAMESPACES, None, {"metadata": {"name": namespace, "labels": labels}})
        assert code < 300 or code == 409, f"namespace {namespace}: HTTP {code}: {body}"
        self._namespaces.add(namespace)

    def ensure_claim(self, namespace: str, claim: str, access_mode: str = "ReadWriteMany") -> None:
        """A claim (ReadWriteMany unless told) bound to a PersistentVolume of its own (the kubelet maps it to a
        folder, whatever its access mode: the process kubelet attaches nothing, so it never refuses a mount)."""
        for resource, ns, body in bound_claim(namespace, claim, access_mode, f"/nonexistent/{namespace}-{claim}"):
            code, answer = self.api.create(resource, ns, body)
            assert code < 300 or code == 409, f"{resource} {namespace}-{claim}: HTTP {code}: {answer}"

    # -- objects (any namespace) -----------------------------------------------------------------------

    @property
    def api(self) -> KubeApi:
        assert self.admin is not None, "the cluster is not started"
        return self.admin

    def objects(self, resource: str, namespace: str, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        return self.api.list(resource, namespace, labels)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.api.get(JOBS, namespace, name)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.job(namespace, name)
        assert job is not None, f"FineTuneJob {namespace}/{name} does not exist"
        status: dict[str, Any] = job.get("status") or {}
        return status

    def pods(self, namespace: str, job: str, attempt: int | None = None) -> list[dict[str, Any]]:
        labels = {"kubetune.io/job-name": job} | ({"kubetune.io/attempt": str(attempt)} if attempt else {})
        return self.objects(PODS, namespace, labels)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [e for e in self.objects("v1/events", namespace) if e.get("involvedObject", {}).get("name") == name]

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        return self.api.request(method, path, body)

    def create(self, resource: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.ensure_namespace(namespace)
        document = copy.deepcopy(dict(body))
        document.setdefault("metadata", {})["namespace"] = namespace
        code, payload = self.request("POST", api_path(resource, namespace), document)
        assert code < 300, f"create {resource}: HTTP {code}: {payload}"
        return payload

    def patch(self, resource: str, namespace: str, name: str, patch: Mapping[str, Any], sub: str = "") -> None:
        code, payload = self.request("PATCH", api_path(resource, namespace, name, sub), dict(patch))
        assert code < 300, f"patch {resource} {name}: HTTP {code}: {payload}"

    def delete(self, resource: str, namespace: str, name: str) -> None:
        code, payload = self.request("DELETE", api_path(resource, namespace, name))
        assert code < 300 or code == 404, f"delete {resource} {name}: HTTP {code}: {payload}"
