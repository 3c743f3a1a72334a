"""Cluster DNS for the real node (issue 20): CoreDNS, built from its Go module by `make coredns`, serving
the cluster's zones from the API server on the node's bridge address, port 53, which is what every pod's
resolv.conf names (the kubelet's `clusterDNS`). The ranks of a job find worker 0 through it
(`<job>-w0.<job>.<namespace>.svc`, the job's headless Service).

It answers for `cluster.local` and the reverse zones only: the Corefile has no `forward`, so a name
outside the cluster is refused and no query ever leaves the machine (the containment test asks for one).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.support.controlplane import Component
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
COREDNS = ROOT / ".cache" / "coredns" / "coredns"
ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")


def corefile(address: str, kubeconfig: Path, ready_port: int) -> str:
    """Serve ZONES on `address`:53 from the API server `kubeconfig` names; report readiness (the API's
    Services and EndpointSlices listed) on loopback at `ready_port`; log every query (kept with the node's
    logs when a test fails). Nothing else: no forwarding, no cache
    (a restarted gang's new addresses are answered at once)."""
    zones = " ".join(f"{zone}:53" for zone in ZONES)
    return (
        f"{zones} {{\n"
        f"    bind {address}\n"
        "    errors\n"
        "    log\n"
        f"    ready 127.0.0.1:{ready_port}\n"
        f"    kubernetes {' '.join(ZONES)} {{\n"
        f"        kubeconfig {kubeconfig}\n"
        "        pods insecure\n"
        "    }\n"
        "}\n"
    )


class ClusterDns:
    """CoreDNS as a component of the real node: `component()` to start, `ready()` to wait for."""

    def __init__(self, folder: Path, address: str, kubeconfig: Path) -> None:
        self.ready_port = free_port()
        self.config = folder / "Corefile"
        self.config.write_text(corefile(address, kubeconfig, self.ready_port))

    def component(self, logs: Path) -> Component:
        return Component("coredns", [str(COREDNS), "-conf", str(self.config)], logs / "coredns.log")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ready_port}/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False
