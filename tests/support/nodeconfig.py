"""The configuration files of the real node (issue 20), written so that nothing can leave the machine.

The real-node fixture gives containerd, CNI and the kubelet these files; tests/support/containment.py
checks them (and the host, and a running pod) before any pod starts. Written here, from the node's
folders and networks, so that the checks and the tests see exactly what the node runs:

- the CNI network list: one `bridge`, not a gateway (for a gateway bridge the plugin turns the host's
  IP forwarding on: seen on the project's machine), whose address the node fixture gives it beforehand
  (`NodeNetworks.bridge_address`, where the API server and CoreDNS listen), no masquerade; `host-local`
  addresses from the pod subnet, one route (the Service range, via the bridge address: kube-proxy DNATs
  it on the host), and `loopback`;
- containerd's config (1.6, config version 2): its own root, state and socket, the pods' network
  namespaces under its state and runc's state under its folder (nothing in /run or /var); runc at the
  path given;
  `restrict_oom_score_adj` (the machine may not lower a process's OOM score: the pause sandbox fails
  without it); registries only through `config_path`;
- the registry hosts: every registry, named or not (`_default`), served by a loopback port where
  nothing listens, so an image that is not on the node fails at once instead of being fetched.

TOML is written by hand (the standard library reads TOML but does not write it); the tests parse it
back with tomllib.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Registries the project's manifests name; any other falls to `_default`, which refuses the same way.
KNOWN_REGISTRIES = ("docker.io", "registry.k8s.io", "ghcr.io")

#: The pause image containerd starts every sandbox from: built locally and imported under this name.
SANDBOX_IMAGE = "registry.k8s.io/pause:3.6"


@dataclass(frozen=True)
class NodeNetworks:
    """The node's address plan (IPv4)."""

    pod_cidr: str = "10.244.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    bridge: str = "kt0"
    bridge_address: str = "10.244.0.1"
    """The host's address on the bridge (first of the pod subnet): the API server, the kubelet and CoreDNS
    listen there, the only address pods reach the host at."""

    @property
    def allowed(self) -> tuple[str, str]:
        """Where a pod's packet may go: other pods on the bridge, and Services (DNATed on the host)."""
        return (self.pod_cidr, self.service_cidr)


def cni_network_list(networks: NodeNetworks, data_dir: Path) -> dict[str, Any]:
    """The CNI `.conflist` (as a dict; `json.dumps` it into the CNI config folder); address leases are kept
    in `data_dir` (the node's folder, not the machine's /var/lib/cni)."""
    return {
        "cniVersion": "1.0.0",
        "name": "kubetune-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": networks.bridge,
                "isGateway": False,
                "isDefaultGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(data_dir),
                    "ranges": [[{"subnet": networks.pod_cidr, "rangeStart": _after(networks.bridge_address)}]],
                    "routes": [{"dst": networks.service_cidr, "gw": networks.bridge_address}],
                },
            },
            {"type": "loopback"},
        ],
    }


def _after(address: str) -> str:
    return str(ipaddress.ip_address(address) + 1)


def _quoted(value: str | Path) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string for these values


@dataclass(frozen=True)
class ContainerdPaths:
    """Where the node's containerd keeps everything (none of it the machine's own containerd's)."""

    folder: Path
    runc: Path
    cni_bin_dir: Path

    @property
    def socket(self) -> Path:
        return self.folder / "containerd.sock"

    @property
    def registry_hosts(self) -> Path:
        return self.folder / "certs.d"

    @property
    def cni_conf_dir(self) -> Path:
        return self.folder / "cni"


def containerd_config(paths: ContainerdPaths) -> str:
    """containerd's config.toml."""
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f"root = {_quoted(paths.folder / 'root')}",
            f"state = {_quoted(paths.folder / 'state')}",
            "[grpc]",
            f"  address = {_quoted(paths.socket)}",
            f"{cri}]",
            f"  sandbox_image = {_quoted(SANDBOX_IMAGE)}",
            "  restrict_oom_score_adj = true",
            "  netns_mounts_under_state_dir = true",  # the pods' network namespaces in the node's folder
            f"{cri}.containerd]",
            '  default_runtime_name = "runc"',
            f"{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"{cri}.containerd.runtimes.runc.options]",
            f"  BinaryName = {_quoted(paths.runc)}",
            f"  Root = {_quoted(paths.folder / 'runc')}",  # runc's state too
            "  SystemdCgroup = false",
            f"{cri}.cni]",
            f"  bin_dir = {_quoted(paths.cni_bin_dir)}",
            f"  conf_dir = {_quoted(paths.cni_conf_dir)}",
            f"{cri}.registry]",
            f"  config_path = {_quoted(paths.registry_hosts)}",
            "",
        ]
    )


def registry_hosts(refused_port: int) -> dict[str, str]:
    """The `hosts.toml` of each registry folder under `config_path` (and `_default`): a loopback port where
    nothing listens (the fixture checks that it refuses)."""
    endpoint = f"http://127.0.0.1:{refused_port}"
    # containerd 1.6 refuses a hosts.toml without a [host] table ("invalid `host` tree") and then pulls from
    # the registry the image names, as if there were none (seen on the project's machine): hence both.
    text = f'server = "{endpoint}"\n\n[host."{endpoint}"]\n  capabilities = ["pull", "resolve"]\n'
    return {folder: text for folder in ("_default", *KNOWN_REGISTRIES)}
