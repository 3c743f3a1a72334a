"""NetworkPolicy enforcement on the real node (issue 26): kube-network-policies, built from its Go module
by `make netpol`, the NetworkPolicy agent of Kubernetes' network SIG (sigs.k8s.io/kube-network-policies).

It watches NetworkPolicies, Namespaces and Pods and judges the first packet of each connection that the
kernel hands it through an nfqueue: accepted or dropped by the policies, as a CNI with NetworkPolicy support
does on a real cluster. Here it runs on the host as its DaemonSet would with hostNetwork, with the admin
credentials given the way `rest.InClusterConfig` reads them (the Service host and port in the
environment, the token and CA under /var/run/secrets/kubernetes.io/serviceaccount): in a mount namespace
of its own where /run is an empty tmpfs holding only those two files, so nothing of this machine's /run is
touched or seen.

The hook that hands it the packets: the agent installs its own (an nftables table, `inet
kube-network-policies`, whose rules `queue` new connections from or to selected pods), which needs the
kernel's nftables queue expression (CONFIG_NFT_QUEUE). This project's machines run a kernel without it
(the agent's log says `netlink receive: no such file or directory` and no table appears), but with the
iptables NFQUEUE target. So when the agent's table does not appear once its queue is bound, the node
installs the same hook with iptables (`KT-NODE-NETPOL`, jumped to first from FORWARD, which bridged packets
between pods traverse through br_netfilter): connections not yet established, from or to the pod subnet,
go to the agent's queue, without bypass (if the agent stops, new pod-to-pod connections are dropped, never
let through unjudged). The host's own traffic to pods (the kubelet's probes) does not pass FORWARD, as the
agent's own rules let the host's root traffic through. The decisions are the agent's either way.

It catches only SIGINT (then removes its table); stopping removes the iptables hook first, sends SIGINT,
and deletes the table afterwards in any case: a hook left behind would queue later pods' packets to a queue
nobody reads.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.commands import run_tool
from tests.support.controlplane import ADMIN_TOKEN, Component, ControlPlane
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / ".cache" / "netpol" / "kube-network-policies"
#: The agent's nftables table (its default name).
TABLE = ("inet", "kube-network-policies")
#: The agent's nfqueue (its default number).
QUEUE = 100
#: The iptables hook installed where the agent cannot install its own (module docstring).
HOOK_CHAIN = "KT-NODE-NETPOL"


def table_exists() -> bool:
    return run_tool("nft", "list", "table", *TABLE).returncode == 0


def delete_table() -> None:
    if table_exists():
        run_tool("nft", "delete", "table", *TABLE)


def queue_bound(number: int = QUEUE) -> bool:
    """Whether a process listens on nfqueue `number` (the kernel's list of bound queues)."""
    try:
        lines = Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines()
    except OSError:
        return False
    return any(line.split() and line.split()[0] == str(number) for line in lines)


def install_hook(pod_cidr: str) -> None:
    """Hand new connections from or to the pod subnet, bridged between pods, to the agent's queue."""
    remove_hook()
    for argv in (
        ("iptables", "-N", HOOK_CHAIN),
        ("iptables", "-A", HOOK_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"),
        ("iptables", "-A", HOOK_CHAIN, "-s", pod_cidr, "-j", "NFQUEUE", "--queue-num", str(QUEUE)),
        ("iptables", "-A", HOOK_CHAIN, "-d", pod_cidr, "-j", "NFQUEUE", "--queue-num", str(QUEUE)),
        ("iptables", "-I", "FORWARD", "1", "-j", HOOK_CHAIN),
    ):
        done = run_tool(*argv)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def remove_hook() -> None:
    while run_tool("iptables", "-D", "FORWARD", "-j", HOOK_CHAIN).returncode == 0:
        pass
    run_tool("iptables", "-F", HOOK_CHAIN)
    run_tool("iptables", "-X", HOOK_CHAIN)


def preflight() -> list[str]:
    """What is missing for the agent, each with what to do (empty: it can start)."""
    missing = []
    if not AGENT.exists():
        missing.append(f"{AGENT} is missing (make netpol)")
    for tool, package in (("nft", "nftables"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} is missing (apt-get install {package})")
    if not Path("/proc/net/netfilter/nfnetlink_queue").exists():
        missing.append("the kernel has no nfnetlink_queue (modprobe nfnetlink_queue)")
    if shutil.which("nft") and table_exists():
        missing.append(
            f"nftables table {' '.join(TABLE)} exists already: another kube-network-policies runs here, or a "
            f"killed test run left it (nft delete table {' '.join(TABLE)})"
        )
    if queue_bound():
        missing.append(f"nfqueue {QUEUE} is in use by another process (another kube-network-policies?)")
    if run_tool("iptables", "-S", HOOK_CHAIN).returncode == 0:
        missing.append(
            f"iptables chain {HOOK_CHAIN} exists already: a killed test run left it (remove it and its FORWARD jump)"
        )
    bridged = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not bridged.exists() or bridged.read_text().strip() != "1":
        missing.append(
            "bridged packets skip iptables (net.bridge.bridge-nf-call-iptables is not 1: modprobe br_netfilter)"
        )
    return missing


class NetworkPolicyAgent:
    """kube-network-policies for node `node_name` of `plane` (which listens on the node's bridge)."""

    def __init__(self, folder: Path, plane: ControlPlane, node_name: str, pod_cidr: str) -> None:
        self.plane = plane
        self.node_name = node_name
        self.pod_cidr = pod_cidr
        self.hooked_by_us = False
        """Whether the node installed the iptables hook (the agent could not install its own)."""
        self.account = folder / "serviceaccount"
        self.account.mkdir(parents=True, exist_ok=True)
        (self.account / "token").write_text(ADMIN_TOKEN)  # test infrastructure, as the kubelet's credentials
        shutil.copyfile(plane.ca_file, self.account / "ca.crt")
        self.metrics_port = free_port()
        self.component: Component | None = None

    def start(self, logs: Path) -> Component:
        script = (
            "mount -t tmpfs -o mode=0755 kubetune-netpol /run && mkdir -p /run/secrets/kubernetes.io && "
            f'ln -s "$ACCOUNT" /run/secrets/kubernetes.io/serviceaccount && exec "$AGENT" '
            f"--hostname-override={self.node_name} --disable-nri --fail-open=false "
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port} --netfilter-bug-1766-fix=false --v=2"
        )
        self.component = Component(
            "kube-network-policies",  # (nfqueue QUEUE, its default)
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            logs / "kube-network-policies.log",
        )
        self.component.start(
            {
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "ACCOUNT": str(self.account),
                "AGENT": str(AGENT),
                "KUBERNETES_SERVICE_HOST": self.plane.address,
                "KUBERNETES_SERVICE_PORT": str(self.plane.port),
            }
        )
        return self.component

    def ready(self) -> bool:
        """Its caches synced and its queue bound (it binds it after trying its rules), and a hook in place:
        its own table, else the node's iptables hook (module docstring)."""
        if not queue_bound():
            return False
        if not table_exists() and not self.hooked_by_us:
            install_hook(self.pod_cidr)
            self.hooked_by_us = True
        return True

    def stop(self, timeout: float = 20) -> None:
        process = self.component.process if self.component else None
        try:
            remove_hook()
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)  # its only clean stop (module docstring)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    assert self.component is not None
                    self.component.stop()
        finally:
            delete_table()
