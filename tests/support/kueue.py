"""Real Kueue for the test suite: its manager (built from its Go module by `make kueue`) run as a process
against the real control plane (tests/support/controlplane.py), with its webhooks served on loopback.

Kueue runs as a platform team would run it for kubetune: `integrations.externalFrameworks` names
FineTuneJob (kubetune creates the Workloads itself), no built-in job integration (no batch Job or pod
webhooks to register), one ResourceFlavor, one ClusterQueue with a quota, and a LocalQueue per test
namespace. What differs from a cluster, and why:

- **Webhooks on loopback.** Kueue's Workload, ClusterQueue, Cohort and ResourceFlavor webhooks (the
  `kueue.x-k8s.io` entries of the module's own webhook manifest) are registered with
  `clientConfig.url: https://127.0.0.1:<port>/<path>` instead of a Service, and Kueue serves them from a
  certificate for 127.0.0.1 signed by the control plane's CA (`webhook.certDir`), which is the
  `caBundle`. The API server calls them as it calls any webhook; the job-framework entries (batch Job,
  Pod, JobSet, ...) are left out, as Kueue serves no such path with those integrations off.
- **No internal certificate management, no leader election**; with certificate management off Kueue
  reads its metrics certificate from the fixed path /etc/kueue/metrics/certs, written here once if absent.
- `--feature-gates=VisibilityOnDemand=false`: the on-demand visibility API server needs an APIService
  and aggregation, which the test control plane does not configure.

Kueue's CRDs are applied with the control plane's own CRD (root conftest.py), before the controller-
manager starts, so that the garbage collector deletes a deleted job's Workload at once.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.controlplane import ROOT, Component, ControlPlane
from tests.support.ports import free_port

FOLDER = ROOT / ".cache" / "kueue"
#: Built by `make kueue` (Makefile: KUEUE_VERSION).
BINARY = FOLDER / "kueue"
CRDS = FOLDER / "crds"
WEBHOOKS = FOLDER / "webhooks.yaml"
VERSION = next(
    line.split(":=")[1].strip()
    for line in (ROOT / "Makefile").read_text().splitlines()
    if line.startswith("KUEUE_VERSION :=")
)
NAMESPACE = "kueue-system"
METRICS_CERTS = Path("/etc/kueue/metrics/certs")
EXTERNAL_FRAMEWORK = "FineTuneJob.v1alpha1.kubetune.io"
#: The quota of every scenario: one ClusterQueue, one flavor, room for one two-worker CPU gang (each worker
#: requests 1 CPU and 2Gi, the operator's defaults).
FLAVOR = "cpu-nodes"
FLAVOR_LABELS = {"kubernetes.io/arch": "amd64"}
FLAVOR_TOLERATIONS = [{"key": "kubetune.io/queue", "operator": "Exists", "effect": "NoSchedule"}]
CLUSTER_QUEUE = "team"
LOCAL_QUEUE = "team-queue"
QUOTA = {"cpu": "2", "memory": "8Gi"}
#: The GPU queue of examples/lora-early-stopping.yaml (LocalQueue `team-gpus`): the nodes' fake GPUs.
GPU_FLAVOR, GPU_CLUSTER_QUEUE = "gpu-nodes", "gpus"
GPU_FLAVOR_LABELS = {"kubernetes.io/os": "linux"}
GPU_QUOTA = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "8"}


def built() -> bool:
    return BINARY.exists() and CRDS.is_dir() and WEBHOOKS.exists()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def serving_certificate(folder: Path, ca_folder: Path) -> None:
    """tls.crt / tls.key for 127.0.0.1 signed by the control plane's CA (the webhooks' caBundle)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kueue-webhook", "-keyout", "tls.key",
             "-out", "tls.csr", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", "tls.csr", "-CA", str(ca_folder / "ca.crt"), "-CAkey", str(ca_folder / "ca.key"),
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "tls.crt", cwd=folder)  # fmt: skip


def configuration(webhook_port: int, health_port: int, metrics_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": [], "externalFrameworks": [EXTERNAL_FRAMEWORK]},
    }


def loopback_webhooks(port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's own webhook configurations, for its own kinds only, calling 127.0.0.1:`port`."""
    documents = [d for d in yaml.safe_load_all(WEBHOOKS.read_text()) if d]
    for document in documents:
        document["metadata"] = {"name": f"kueue-{document['metadata']['name']}"}
        kept = []
        for hook in document.get("webhooks") or []:
            if not all(g == "kueue.x-k8s.io" for rule in hook.get("rules") or [] for g in rule.get("apiGroups") or []):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            kept.append(hook)
        document["webhooks"] = kept
    return documents


@dataclass
class Kueue:
    """Kueue's manager as a process, with its webhooks registered and the scenarios' queues."""

    plane: ControlPlane
    folder: Path
    component: Component | None = None
    health_port: int = 0
    queues: set[tuple[str, str]] = field(default_factory=set)

    def start(self, timeout: float = 120) -> Kueue:
        import base64

        if not built():
            raise RuntimeError(f"{BINARY} is missing: run `make kueue` (Kueue {VERSION} from its Go module)")
        self.folder.mkdir(parents=True, exist_ok=True)
        certs = self.folder / "certs"
        serving_certificate(certs, self.plane.ca_file.parent)
        if not (METRICS_CERTS / "tls.crt").exists():
            try:
                METRICS_CERTS.mkdir(parents=True, exist_ok=True)
                for name in ("tls.crt", "tls.key"):
                    shutil.copy(certs / name, METRICS_CERTS / name)
            except PermissionError as error:
                raise RuntimeError(f"Kueue reads its metrics certificate from {METRICS_CERTS}: make it writable "
                                   f"once (any tls.crt/tls.key pair will do) or run the tests as root") from error  # fmt: skip
        webhook_port, self.health_port, metrics_port = free_port(), free_port(), free_port()
        config = self.folder / "config.yaml"
        config.write_text(yaml.safe_dump(configuration(webhook_port, self.health_port, metrics_port, certs)))
        self.kubectl_apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
        argv = [str(BINARY), f"--config={config}", "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=2"]
        self.component = Component("kueue", argv, self.folder / "kueue.log")
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.folder), "KUBECONFIG": str(self.plane.admin_kubeconfig)}
        self.component.start(env)
        self._wait_ready(timeout)
        ca_bundle = base64.b64encode(self.plane.ca_file.read_bytes()).decode()
        self.kubectl_apply(loopback_webhooks(webhook_port, ca_bundle))
        self.kubectl_apply(self._queues(), retry_for=timeout)  # the first calls wait for the webhooks to serve
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.component is not None
            self.component.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError, ssl.SSLError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Kueue not ready after {timeout} s; log: {self.folder / 'kueue.log'}")

    def _queues(self) -> list[dict[str, Any]]:
        flavors = [(FLAVOR, FLAVOR_LABELS, FLAVOR_TOLERATIONS), (GPU_FLAVOR, GPU_FLAVOR_LABELS, [])]
        queues = [(CLUSTER_QUEUE, FLAVOR, QUOTA), (GPU_CLUSTER_QUEUE, GPU_FLAVOR, GPU_QUOTA)]
        return [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ResourceFlavor",
                "metadata": {"name": name},
                "spec": {"nodeLabels": labels, **({"tolerations": tolerations} if tolerations else {})},
            }
            for name, labels, tolerations in flavors
        ] + [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": name},
                "spec": {
                    "namespaceSelector": {},
                    "resourceGroups": [
                        {
                            "coveredResources": list(quota),
                            "flavors": [
                                {
                                    "name": flavor,
                                    "resources": [{"name": r, "nominalQuota": q} for r, q in quota.items()],
                                }
                            ],
                        }
                    ],
                    "preemption": {"withinClusterQueue": "LowerPriority"},
                },
            }
            for name, flavor, quota in queues
        ]

    def local_queue(self, namespace: str, name: str = LOCAL_QUEUE, cluster_queue: str = CLUSTER_QUEUE) -> str:
        """The LocalQueue `name` of `namespace` (created once), feeding `cluster_queue`."""
        if (namespace, name) not in self.queues:
            queue = {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterQueue": cluster_queue},
            }
            self.kubectl_apply([queue])
            self.queues.add((namespace, name))
        return name

    def kubectl_apply(self, documents: list[dict[str, Any]], retry_for: float = 0) -> None:
        deadline = time.monotonic() + retry_for
        while True:
            done = self.plane.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(documents))
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"kubectl apply: {done.stderr}")
            time.sleep(1)

    def stop(self) -> None:
        """Unregister the webhooks (failurePolicy Fail: with Kueue gone they would refuse every Kueue object),
        then stop Kueue."""
        self.plane.kubectl("delete", "--ignore-not-found", "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                           "kueue-mutating-webhook-configuration", "kueue-validating-webhook-configuration")  # fmt: skip
        if self.component is not None:
            self.component.stop()

    def log_tail(self, characters: int = 6000) -> str:
        log = self.folder / "kueue.log"
        return log.read_text(errors="replace")[-characters:] if log.exists() else ""
