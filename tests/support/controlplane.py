"""A real Kubernetes control plane for the test suite: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, built from the Kubernetes Go modules (tests/controlplane, `make controlplane`) and run
as processes on free loopback ports.

The API server runs as a production cluster's does where it matters to kubetune: TLS, token
authentication, `Node,RBAC` authorization, service-account token signing, and the admission plugins
platform teams run (NamespaceLifecycle, LimitRanger, ServiceAccount, PodSecurity, ResourceQuota,
OwnerReferencesPermissionEnforcement, Priority). The controller-manager runs the garbage collector,
namespace, node-lifecycle, service-account-token and endpoints controllers; the scheduler binds pods
to the nodes the process kubelet registers (tests/e2e/kubelet.py).

Everything listens on 127.0.0.1; nothing is pulled or fetched. Each component is started and stopped
by PID; their logs stay in the control plane's folder, and `ControlPlane.log_tails()` returns them for
a failing test's report. `ControlPlane.restart(name)` stops one component and starts it again as it was
(same command line, same environment, so etcd keeps its data folder and every port stays the same):
the control-plane faults of tests/e2e/test_control_plane_faults.py.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
#: Built by `make controlplane`; KUBETUNE_CONTROLPLANE overrides it.
BINARY = Path(os.environ.get("KUBETUNE_CONTROLPLANE", ROOT / ".cache" / "controlplane" / "controlplane"))
#: Kubernetes release the binary is built from: the one tests/controlplane/go.mod pins.
KUBERNETES_VERSION = next(
    line.split()[1]
    for line in (ROOT / "tests" / "controlplane" / "go.mod").read_text().splitlines()
    if line.strip().startswith("k8s.io/kubernetes v")
)
#: The admission plugins a production cluster runs, beside the default ones.
ADMISSION_PLUGINS = (
    "NamespaceLifecycle,LimitRanger,ServiceAccount,PodSecurity,ResourceQuota,"
    "OwnerReferencesPermissionEnforcement,Priority,DefaultTolerationSeconds"
)
#: The Service range; its addresses are virtual (no packet is ever sent to them by the tests).
SERVICE_RANGE = "10.96.0.0/16"
ADMIN_TOKEN = "kubetune-test-admin"
#: Seconds the node-lifecycle controller waits for a silent node before marking it NotReady (real
#: clusters: 40-50 s; short here so that node-loss scenarios end quickly).
NODE_MONITOR_GRACE_SECONDS = 8
#: Seconds a restarted component may take to stop before it is killed. etcd stops in about 7 s with the API
#: server connected; kube-apiserver stops listening at once but exits only once its open watches end (up to
#: their timeoutSeconds, a minute), so it is killed, as a kubelet kills a static pod after its grace period.
RESTART_GRACE_SECONDS = 10.0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path, address: str = "127.0.0.1") -> None:
    """A CA, the API server's serving certificate (loopback, `address` and in-cluster names), its client
    certificate towards kubelets and the service-account signing key pair, with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kubetune-test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)  # fmt: skip
    names = "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:127.0.0.1,IP:10.96.0.1"
    names += f",IP:{address}" if address != "127.0.0.1" else ""
    (folder / "san.cnf").write_text(f"subjectAltName={names}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver", "-keyout", "apiserver.key",
             "-out", "apiserver.csr", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.cnf", "-out", "apiserver.crt", cwd=folder)  # fmt: skip
    # the API server's client certificate towards kubelets (logs, exec), which trust this CA
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
             "-keyout", "kubelet-client.key", "-out", "kubelet-client.csr", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-out", "kubelet-client.crt", cwd=folder)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=folder)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)


def kubeconfig(server: str, ca_file: Path, token: str, namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig for `server` with a bearer token."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}],
        "current-context": "test",
    }


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """The environment it was started with (a restart starts it with the same)."""

    def start(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def restart(self, timeout: float = 15) -> None:
        """Stop it (SIGTERM, then SIGKILL after `timeout` seconds) and start it again, as it was."""
        self.stop(timeout)
        self.start(self.env)

    def stop(self, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler in `folder`."""

    folder: Path
    components: list[Component] = field(default_factory=list)
    port: int = 0
    users: dict[str, str] = field(default_factory=dict)
    """More static token users: {token: user name} (no group: RBAC decides what they may do)."""
    scheduler: bool = True
    """Run kube-scheduler (the operator benchmark leaves pods unscheduled and plays the kubelet itself)."""
    address: str = "127.0.0.1"
    """Where the API server listens and what it advertises: loopback, or the real node's bridge address,
    which pods reach through the `kubernetes` Service (tests/support/realnode.py)."""

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.folder / "pki" / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.folder / "admin.kubeconfig"

    def start(self, crds: Path | None = None, timeout: float = 90, extra_crds: Sequence[Path] = ()) -> ControlPlane:
        """Start every component; `crds` (a file or folder) is applied and Established before the
        controller-manager starts, so that its garbage collector watches those kinds from the start;
        `extra_crds` (Kueue's) too, applied server-side (too large for a client-side apply's annotation)."""
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run `make controlplane` (builds it from tests/controlplane)")
        pki = self.folder / "pki"
        make_certificates(pki, self.address)
        users = "".join(f"{token},{user},{user}\n" for token, user in self.users.items())
        (self.folder / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},kubetune-admin,kubetune-admin,"system:masters"\n{users}'
        )
        self.port = free_port()
        self.admin_kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.url, self.ca_file, ADMIN_TOKEN)))
        etcd_port, peer_port = free_port(), free_port()
        binary = str(BINARY)
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        etcd = Component("etcd", [binary, "etcd", "--name=default", f"--data-dir={self.folder / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync", "--log-level=warn",
            "--listen-metrics-urls=", "--quota-backend-bytes=2147483648"], logs / "etcd.log")  # fmt: skip
        apiserver = Component("kube-apiserver", [binary, "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}", f"--bind-address={self.address}", f"--advertise-address={self.address}",
            f"--secure-port={self.port}", f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}", f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.folder / 'tokens.csv'}", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}", f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--enable-admission-plugins={ADMISSION_PLUGINS}", "--allow-privileged=false",
            f"--cert-dir={pki}", f"--audit-log-path={logs / 'audit.log'}",
            f"--audit-policy-file={self._audit_policy()}", "--audit-log-maxsize=200", "--v=1",
            # reach kubelets (logs, exec) at their InternalIP: a node name would be looked up in DNS
            "--kubelet-preferred-address-types=InternalIP", f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}"],
            logs / "kube-apiserver.log")  # fmt: skip
        controller_manager = Component("kube-controller-manager", [binary, "kube-controller-manager",
            f"--kubeconfig={self.admin_kubeconfig}", "--leader-elect=false", "--secure-port=0",
            "--controllers=*,-bootstrapsigner,-tokencleaner,-csrsigning,-csrapproving,-csrcleaner",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false", f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE_SECONDS}s", "--node-monitor-period=2s",
            "--concurrent-gc-syncs=5", "--v=1"], logs / "kube-controller-manager.log")  # fmt: skip
        scheduler = Component("kube-scheduler", [binary, "kube-scheduler",
            f"--kubeconfig={self.admin_kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=1"],
            logs / "kube-scheduler.log")  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.folder)}
        started = time.monotonic()
        try:
            for component in (etcd, apiserver):
                self.components.append(component)
                component.start(env)
            self._wait_ready(timeout)
            if crds is not None:
                self._apply_crds(crds)
            for folder in extra_crds:
                self._apply_crds(folder, "--server-side")
            for component in (controller_manager, scheduler) if self.scheduler else (controller_manager,):
                self.components.append(component)
                component.start(env)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def _apply_crds(self, crds: Path, *options: str) -> None:
        for args in (("apply", *options, "-f", str(crds)), ("wait", "--for=condition=Established", "crd", "--all")):
            done = self.kubectl(*args)
            if done.returncode != 0:
                raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr}")

    def _audit_policy(self) -> Path:
        """Metadata of every request (who, verb, resource): the benchmark counts the operator's requests."""
        policy = self.folder / "audit-policy.yaml"
        policy.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n")
        return policy

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for component in self.components:
                component.check_alive()
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready after {timeout} s ({last}); logs in {self.folder / 'logs'}")

    def check_alive(self) -> None:
        for component in self.components:
            component.check_alive()

    def component(self, name: str) -> Component:
        found = [component for component in self.components if component.name == name]
        if not found:
            raise LookupError(f"no component {name} (have: {[c.name for c in self.components]})")
        return found[0]

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (plain HTTP on loopback; it also serves etcd's JSON gateway, /v3/...)."""
        flag = next(arg for arg in self.component("etcd").argv if arg.startswith("--advertise-client-urls="))
        return flag.partition("=")[2]

    def restart(self, name: str, grace: float = RESTART_GRACE_SECONDS, timeout: float = 90) -> float:
        """Stop component `name` (SIGTERM, SIGKILL after `grace` seconds) and start it again as it was;
        returns once the API server is ready again (its /readyz checks etcd too), in seconds. The other
        components are left alone."""
        started = time.monotonic()
        self.component(name).restart(grace)
        self._wait_ready(timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The kubectl built with the control plane (the machine's own may be older), never raising."""
        return subprocess.run(
            [str(BINARY), "kubectl", f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def log_tails(self, characters: int = 4000) -> str:
        parts = []
        for component in self.components:
            text = component.log.read_text(errors="replace") if component.log.exists() else ""
            parts.append(f"--- {component.name} ({component.log}) ---\n{text[-characters:]}")
        return "\n".join(parts)
