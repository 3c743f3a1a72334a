"""A real node on this machine (issue 20): containerd, runc, CNI, the kubelet, kube-proxy and CoreDNS,
started and stopped by the test suite, running the project's own images as pods, with no packet able to
leave.

- The kubelet and kube-proxy are commands of the control-plane binary (tests/controlplane); containerd
  (1.6), runc and the CNI plugins are Debian's. containerd gets its own root, state and socket under the
  node's folder (nothing of a containerd the machine may run is touched); the images are imported from
  `make images`' OCI archives (the pause image among them), so no pull ever happens.
- The network is a bridge (`kt0`) addressed by the fixture: the API server listens on the bridge
  address (ControlPlane.address), kube-proxy DNATs the Service range to it on the host, pods get
  addresses from the pod subnet and one route, to the Service range via the bridge address. No default
  route, no masquerade, the host never forwards.
- Before containerd starts, and after every pod the tests start (`check_contained`), the containment
  checks of tests/support/containment.py must find nothing: the fixture refuses to go on otherwise.
- CoreDNS (tests/support/clusterdns.py) serves the cluster's zones on the bridge address, and nothing else.
- Stopping deletes every pod through the API and waits for the kubelet to tear the sandboxes down (CNI
  DEL), then stops kube-proxy (and removes its rules), the kubelet and containerd by PID, kills any shim
  left, unmounts what is left under the node's folder and deletes the bridge.

The kubelet and kube-proxy use the admin credentials: this is test infrastructure, and the Node
authorizer is not what is tested (the operator's own RBAC is, from the chart). Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support import containment
from tests.support.clusterdns import COREDNS, ClusterDns
from tests.support.commands import run_tool as _run
from tests.support.controlplane import BINARY, NODE_MONITOR_GRACE_SECONDS, Component, ControlPlane
from tests.support.kubechains import kube_chains, remove_kube_chains
from tests.support.nodeconfig import ContainerdPaths, NodeNetworks, cni_network_list, containerd_config, registry_hosts
from tests.support.ports import free_port
from tests.support.waiting import GiveUp, eventually

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / ".cache" / "images"
CNI_BIN_DIR = Path("/usr/lib/cni")
#: A loopback port where nothing listens: every registry points there (checked refused at start).
REFUSED_PORT = 9
NODE_NAME = "kt-node"
#: What pods may reach on the host, through the bridge (everything else is dropped: the machine has
#: services listening on every address that pods must never reach).
INPUT_CHAIN = "KT-NODE-INPUT"
#: Free disk the node needs under its folder: the images' content and snapshots (the trainer's ~10 GB).
NEEDED_DISK_GIB = 12
#: The kernel settings the kubelet sets (protectKernelDefaults: false), put back as they were at stop.
KUBELET_SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
                   "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes")  # fmt: skip


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"the real node cannot start: {what}")


@dataclass
class RealNode:
    """One node, `NODE_NAME`, registered with `control_plane` (which must listen on the bridge address)."""

    folder: Path
    control_plane: ControlPlane
    images: tuple[str, ...] = ("pause", "operator")
    networks: NodeNetworks = field(default_factory=NodeNetworks)
    components: list[Component] = field(default_factory=list)
    saved_sysctls: dict[str, str] = field(default_factory=dict)
    owns_rules: bool = False
    """Whether this node's kubelet or kube-proxy ran (only then are KUBE-* chains removed at stop)."""

    @property
    def containerd(self) -> ContainerdPaths:
        return ContainerdPaths(
            self.folder / "containerd", runc=Path(shutil.which("runc") or "runc"), cni_bin_dir=CNI_BIN_DIR
        )

    @property
    def pod_logs(self) -> Path:
        return self.folder / "pod-logs"

    # -- start -------------------------------------------------------------------------------------------

    def preflight(self) -> None:
        """What the node needs, each missing piece named with what to do."""
        _need(os.geteuid() == 0, "it needs root (containerd, runc, network namespaces)")
        for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux"), ("iptables-save", "iptables")):
            _need(shutil.which(tool) is not None, f"{tool} is missing (apt-get install {package})")
        _need(not kube_chains(), "this machine has Kubernetes iptables chains of its own (KUBE-*), which the "
              "node's stop would remove: run the tests on a machine that is not a Kubernetes node")  # fmt: skip
        for tool, package in (
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("runc", "runc"),
            ("iptables", "iptables"),
        ):
            _need(shutil.which(tool) is not None, f"{tool} is missing (apt-get install {package})")
        _need(
            (CNI_BIN_DIR / "bridge").exists(),
            f"no CNI plugins in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)",
        )
        _need(BINARY.exists(), f"{BINARY} is missing (make controlplane)")
        free = shutil.disk_usage(self.folder.parent).free / 2**30
        _need(free >= NEEDED_DISK_GIB, f"{free:.1f} GiB free under {self.folder.parent}: the images unpacked need "
              f"about {NEEDED_DISK_GIB} GiB (point pytest's --basetemp elsewhere)")  # fmt: skip
        _need(COREDNS.exists(), f"{COREDNS} is missing (make coredns)")
        for image in self.images:
            _need((IMAGES / f"{image}.tar").exists(), f"{IMAGES / image}.tar is missing (make images)")
        _need(
            self.control_plane.address == self.networks.bridge_address,
            "the control plane must listen on the bridge address",
        )

    def make_bridge(self) -> None:
        """The bridge with the host's address on it, before the API server binds that address."""
        bridge, address = self.networks.bridge, self.networks.bridge_address
        prefix = self.networks.pod_cidr.split("/")[1]
        _run("ip", "link", "del", bridge)
        for argv in (("ip", "link", "add", bridge, "type", "bridge"), ("ip", "addr", "add", f"{address}/{prefix}", "dev", bridge),
                     ("ip", "link", "set", bridge, "up")):  # fmt: skip
            done = _run(*argv)
            _need(done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}")

    def start(self, timeout: float = 60) -> RealNode:
        self.preflight()
        paths = self.containerd
        paths.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (paths.folder / "config.toml").write_text(containerd_config(paths))
        hosts = registry_hosts(REFUSED_PORT)
        for registry, text in hosts.items():
            (paths.registry_hosts / registry).mkdir(parents=True, exist_ok=True)
            (paths.registry_hosts / registry / "hosts.toml").write_text(text)
        network_list = cni_network_list(self.networks, self.folder / "ip-leases")
        (paths.cni_conf_dir / "10-kubetune.conflist").write_text(json.dumps(network_list))
        breaches = containment.cni_breaches(network_list, self.networks.allowed)
        breaches += containment.registry_breaches(containerd_config(paths), hosts)
        dns = ClusterDns(self.folder, self.networks.bridge_address, self.control_plane.admin_kubeconfig)
        breaches += containment.dns_breaches(dns.config.read_text(), self.networks.bridge_address)
        if not containment.refused(f"http://127.0.0.1:{REFUSED_PORT}"):
            breaches.append(f"127.0.0.1:{REFUSED_PORT}, where every registry points, does not refuse connections")
        self._refuse(breaches)
        self.check_contained()
        self.filter_input()
        self.saved_sysctls = {name: _sysctl_path(name).read_text().strip() for name in KUBELET_SYSCTLS}
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(self.folder)}
        self._start(
            Component(
                "containerd", ["containerd", "--config", str(paths.folder / "config.toml")], logs / "containerd.log"
            ),
            env,
        )
        self._wait(lambda: paths.socket.exists(), timeout, "containerd's socket")
        for image in self.images:  # (the trainer's 3.2 GB take 1-2 minutes to unpack)
            began = time.monotonic()
            archive = str(IMAGES / f"{image}.tar")
            done = _run("ctr", "--address", str(paths.socket), "-n", "k8s.io", "images", "import", archive, timeout=600)
            _need(done.returncode == 0, f"importing {image}.tar: {done.stderr.strip()}")
            with (logs / "start.log").open("a") as log:
                log.write(f"imported {image}.tar in {time.monotonic() - began:.1f} s\n")
        self.owns_rules = True
        self._start(Component("kubelet", self._kubelet_argv(), logs / "kubelet.log"), env)
        self._start(
            Component(
                "kube-proxy",
                [str(BINARY), "kube-proxy", f"--config={self._proxy_config()}", "--v=1"],
                logs / "kube-proxy.log",
            ),
            env,
        )
        self._start(dns.component(logs), env)
        self._wait(self.ready, timeout, f"node {NODE_NAME} to be Ready")
        self._wait(dns.ready, timeout, "CoreDNS to be ready")
        self.check_contained()
        return self

    def _start(self, component: Component, env: dict[str, str]) -> None:
        self.components.append(component)
        component.start(env)

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        def alive_and(check: Callable[[], bool]) -> bool:
            try:
                self.check_alive()
            except RuntimeError as died:
                raise GiveUp(f"{died} (logs in {self.folder / 'logs'})") from None
            return check()

        eventually(lambda: alive_and(check), timeout, interval=0.2, message=f"{what} (logs in {self.folder / 'logs'})")

    def ready(self) -> bool:
        done = self.control_plane.kubectl(
            "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
        )
        return done.returncode == 0 and done.stdout == "True"

    def _kubelet_argv(self) -> list[str]:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # the machine: cgroup v1, no systemd, no swap policy; no node-allocatable enforcement
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "failSwapOn": False, "protectKernelDefaults": False, "localStorageCapacityIsolation": False,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.control_plane.ca_file)}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": self.networks.bridge_address, "port": free_port(), "readOnlyPort": 0, "healthzPort": 0,
            "clusterDNS": [self.networks.bridge_address], "clusterDomain": "cluster.local", "resolvConf": "/dev/null",
            "podCIDR": self.networks.pod_cidr, "podLogsDir": str(self.pod_logs),
            # nothing is pulled and no disk pressure evicts the test's pods
            "imageGCHighThresholdPercent": 100, "serializeImagePulls": False,
            # renewed every quarter of its duration (2 s), well inside the controller's grace: the default
            # lease (40 s, renewed every 10 s) let the node flap NotReady and its workers look lost
            "nodeLeaseDurationSeconds": NODE_MONITOR_GRACE_SECONDS,
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
        }  # fmt: skip
        path = self.folder / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        return [str(BINARY), "kubelet", f"--config={path}", f"--kubeconfig={self.control_plane.admin_kubeconfig}",
                f"--container-runtime-endpoint=unix://{self.containerd.socket}", f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.networks.bridge_address}", f"--root-dir={self.folder / 'kubelet'}",
                f"--cert-dir={self.folder / 'kubelet-pki'}", "--v=1"]  # fmt: skip

    def _proxy_config(self) -> Path:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.control_plane.admin_kubeconfig)},
            "hostnameOverride": NODE_NAME, "bindAddress": self.networks.bridge_address, "mode": "iptables",
            "healthzBindAddress": f"127.0.0.1:{free_port()}", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "clusterCIDR": self.networks.pod_cidr, "nodePortAddresses": [f"{self.networks.bridge_address}/32"],
            # leave the machine's conntrack sysctls alone
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }  # fmt: skip
        path = self.folder / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    # -- containment ---------------------------------------------------------------------------------------

    def filter_input(self) -> None:
        """Pods reach the host only at the API server's port (the `kubernetes` Service, DNATed there), at
        CoreDNS's (53, the bridge address) and with answers to the host's own connections (probes); IPv6 from
        the bridge not at all."""
        bridge, address = self.networks.bridge, self.networks.bridge_address
        port = str(self.control_plane.port)
        self._remove_input_filter()
        for argv in (
            ("iptables", "-N", INPUT_CHAIN),
            ("iptables", "-A", INPUT_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
            ("iptables", "-A", INPUT_CHAIN, "-p", "tcp", "-d", address, "--dport", port, "-j", "ACCEPT"),
            ("iptables", "-A", INPUT_CHAIN, "-p", "udp", "-d", address, "--dport", "53", "-j", "ACCEPT"),
            ("iptables", "-A", INPUT_CHAIN, "-p", "tcp", "-d", address, "--dport", "53", "-j", "ACCEPT"),
            ("iptables", "-A", INPUT_CHAIN, "-j", "DROP"),
            ("iptables", "-I", "INPUT", "-i", bridge, "-j", INPUT_CHAIN),
            ("ip6tables", "-I", "INPUT", "-i", bridge, "-j", "DROP"),
        ):
            done = _run(*argv)
            _need(done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}")

    def _remove_input_filter(self) -> None:
        bridge = self.networks.bridge
        while _run("iptables", "-D", "INPUT", "-i", bridge, "-j", INPUT_CHAIN).returncode == 0:
            pass
        while _run("ip6tables", "-D", "INPUT", "-i", bridge, "-j", "DROP").returncode == 0:
            pass
        _run("iptables", "-F", INPUT_CHAIN)
        _run("iptables", "-X", INPUT_CHAIN)

    def check_contained(self) -> None:
        """The host forwards nothing (the CNI bridge plugin would turn forwarding on for a gateway bridge),
        and every component still runs (were CoreDNS gone, a resolver of the host listening on every
        address would take the pods' queries at the bridge address, and might forward them)."""
        self._refuse(containment.forwarding_breaches(containment.read_forwarding()))
        self.check_alive()

    def check_alive(self) -> None:
        """Every component still runs; RuntimeError naming the first that died."""
        for component in self.components:
            component.check_alive()

    @staticmethod
    def _refuse(breaches: list[str]) -> None:
        if breaches:
            raise RuntimeError(
                "the real node would let packets or pulls leave the machine:\n- " + "\n- ".join(breaches)
            )

    def container_pid(self, namespace: str, pod: str) -> int:
        """The host PID of the first process of a running pod's (first) container."""
        done = self.control_plane.kubectl(
            "get", "pod", pod, "-n", namespace, "-o", "jsonpath={.status.containerStatuses[0].containerID}"
        )
        container = done.stdout.removeprefix("containerd://")
        tasks = _run("ctr", "--address", str(self.containerd.socket), "-n", "k8s.io", "task", "ls")
        pid = next((line.split()[1] for line in tasks.stdout.splitlines()[1:] if line.split()[0] == container), None)
        if pid is None:
            raise RuntimeError(f"{namespace}/{pod} has no running container")
        return int(pid)

    def pod_routes(self, namespace: str, pod: str) -> list[dict[str, object]]:
        """The routing table of a running pod, IPv4 and IPv6, read in its network namespace (`ip -j route`)."""
        pid = self.container_pid(namespace, pod)
        routes: list[dict[str, object]] = []
        for family in ("-4", "-6"):
            done = _run("nsenter", "-t", str(pid), "-n", "ip", "-j", family, "route")
            if done.returncode != 0:
                raise RuntimeError(f"reading the routes of {namespace}/{pod}: {done.stderr.strip()}")
            routes += json.loads(done.stdout or "[]")
        return routes

    # -- stop ----------------------------------------------------------------------------------------------

    def stop(self, timeout: float = 60) -> None:
        """Every pod deleted through the API and torn down by the kubelet, then the components stopped and the
        machine left as it was: no task, mount, bridge, filter or KUBE-* chain, its kernel settings back, and
        containerd's images and snapshots deleted.
        Raises, after all that, when pods had to be killed because the kubelet did not tear them down."""
        socket = self.containerd.socket
        left: list[str] = []
        try:
            if any(c.name == "kubelet" and c.process and c.process.poll() is None for c in self.components):
                kubectl = self.control_plane.kubectl  # what would make new pods first, then the pods
                kubectl("delete", "finetunejobs.kubetune.io", "--all", "--all-namespaces", "--wait=false")
                kubectl("delete", "deployments,replicasets", "--all", "--all-namespaces", "--cascade=orphan")
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self._sandboxes():
                    # again while any is left: a controller may have made one more meanwhile
                    kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false")
                    time.sleep(1)
            left = self._sandboxes()
            for task in left:  # the kubelet is gone or too slow: the tasks are killed where they run
                _run("ctr", "--address", str(socket), "-n", "k8s.io", "task", "kill", "-s", "SIGKILL", task)
                _run("ctr", "--address", str(socket), "-n", "k8s.io", "task", "delete", "--force", task)
        finally:
            for component in reversed(self.components):
                component.stop()
            if self.owns_rules:
                _run(str(BINARY), "kube-proxy", "--cleanup")
                remove_kube_chains()
            self._remove_input_filter()
            for name, value in self.saved_sysctls.items():
                _sysctl_path(name).write_text(value)
            for pid in self._shims(str(socket)):
                os.kill(pid, signal.SIGKILL)
            for mount in reversed(self._mounts_under()):
                _run("umount", "-l", mount)
            _run("ip", "link", "del", self.networks.bridge)
            # containerd's images and snapshots: the trainer's alone are about 10 GB (logs are kept)
            shutil.rmtree(self.containerd.folder / "root", ignore_errors=True)
        if (self.containerd.folder / "root").exists():
            raise RuntimeError(f"{self.containerd.folder / 'root'} could not be deleted: delete it by hand")
        if left:
            raise RuntimeError(f"the kubelet did not tear down {len(left)} pod sandbox(es) within {timeout:g} s; "
                               f"they were killed (logs in {self.folder / 'logs'})")  # fmt: skip

    def _sandboxes(self) -> list[str]:
        done = _run("ctr", "--address", str(self.containerd.socket), "-n", "k8s.io", "task", "ls", "-q")
        return done.stdout.split() if done.returncode == 0 else []

    @staticmethod
    def _shims(socket: str) -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and socket.encode() in b" ".join(argv):
                    found.append(int(proc.name))
        return found

    def _mounts_under(self) -> list[str]:
        prefix = str(self.folder)
        return [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(prefix)
        ]
