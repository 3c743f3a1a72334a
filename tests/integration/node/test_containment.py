"""The real node's containment checks (tests/support/containment.py), table by table: each door that
would let a pod's packet or an image pull leave the machine is named, and a shut one passes."""

from __future__ import annotations

import socket
import tomllib
from typing import Any

import pytest

from tests.support.clusterdns import corefile
from tests.support.containment import (
    cni_breaches,
    dns_breaches,
    forwarding_breaches,
    read_forwarding,
    refused,
    registry_breaches,
    route_breaches,
)
from tests.support.nodeconfig import ContainerdPaths, NodeNetworks, cni_network_list, containerd_config, registry_hosts

ALLOWED = ("10.244.0.0/24", "10.96.0.0/16")


def bridge(**overrides: Any) -> dict[str, Any]:
    plugin = {
        "type": "bridge",
        "bridge": "kt0",
        "isGateway": False,
        "isDefaultGateway": False,
        "ipMasq": False,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "routes": [{"dst": "10.96.0.0/16"}]},
    }
    return {**plugin, **overrides}


def network_list(*plugins: dict[str, Any]) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "kubetune", "plugins": list(plugins)}


@pytest.mark.parametrize(
    ("conflist", "expected"),
    [
        (network_list(bridge(), {"type": "loopback"}), []),
        (network_list(bridge(isGateway=True)), ["plugins[0].isGateway is true: the plugin turns the host's IP"]),
        (network_list(bridge(isDefaultGateway=True)), ["plugins[0].isDefaultGateway is true"]),
        (network_list(bridge(ipMasq=True)), ["plugins[0].ipMasq is true"]),
        (
            network_list(bridge(ipam={"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}]})),
            ["plugins[0].ipam.routes[0] sends 0.0.0.0/0 out"],
        ),
        (
            network_list(bridge(ipam={"type": "host-local", "routes": [{"dst": "8.8.8.0/24"}]})),
            ["plugins[0].ipam.routes[0] sends 8.8.8.0/24 out"],
        ),
        (network_list(bridge(ipam={"type": "dhcp"})), ["plugins[0].ipam.type is 'dhcp'"]),
        (network_list(bridge(), {"type": "portmap", "snat": True}), ["plugins[1] is of type 'portmap'"]),
        ({"cniVersion": "1.0.0", "type": "bridge"}, ["no `plugins` list"]),
    ],
    ids=[
        "shut",
        "gateway",
        "default-gateway",
        "masquerade",
        "default-route",
        "outside-route",
        "dhcp",
        "portmap",
        "not-a-list",
    ],
)
def test_the_cni_network_list_gives_pods_no_way_out(conflist: dict[str, Any], expected: list[str]) -> None:
    breaches = cni_breaches(conflist, ALLOWED, source="10-kubetune.conflist")
    assert len(breaches) == len(expected), breaches
    for breach, words in zip(breaches, expected, strict=True):
        assert breach.startswith("10-kubetune.conflist: ") and words in breach


CONFIG = """
version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/run/kubetune-node/certs.d"
"""
REFUSED = 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull"]\n'


@pytest.mark.parametrize(
    ("config", "hosts", "expected"),
    [
        (CONFIG, {"_default": REFUSED, "docker.io": REFUSED}, []),
        (CONFIG, {"docker.io": REFUSED}, ["no _default/hosts.toml"]),
        (
            CONFIG,
            {"_default": 'server = "https://registry-1.docker.io"\n[host."http://127.0.0.1:9"]\n'},
            ["server 'https://registry-1.docker.io'"],
        ),
        (CONFIG, {"_default": 'server = "http://127.0.0.1:9"\n'}, ["no [host."]),
        (
            CONFIG,
            {"_default": REFUSED + '[host."https://mirror.example.com"]\n'},
            ["[host.'https://mirror.example.com']"],
        ),
        (CONFIG, {"_default": "[host.'http://127.0.0.1:9']\n"}, ["no `server`"]),
        (
            CONFIG + '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n  endpoint = ["https://x"]\n',
            {"_default": REFUSED},
            ["registry.mirrors is set"],
        ),
        ("version = 2\n", {"_default": REFUSED}, ["config_path is not set"]),
        ("version = \n", {}, ["not TOML"]),
    ],
    ids=[
        "shut",
        "no-default",
        "real-registry",
        "no-host-table",
        "outside-host",
        "no-server",
        "mirrors",
        "no-config-path",
        "not-toml",
    ],
)
def test_containerd_can_fetch_no_image_from_another_machine(
    config: str, hosts: dict[str, str], expected: list[str]
) -> None:
    breaches = registry_breaches(config, hosts)
    assert len(breaches) == len(expected), breaches
    for breach, words in zip(breaches, expected, strict=True):
        assert words in breach


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([{"dst": "10.244.0.0/24", "dev": "eth0"}, {"dst": "10.96.0.0/16", "gateway": "10.244.0.1"}], []),
        ([{"dst": "default", "gateway": "10.244.0.1"}], ["route to default via 10.244.0.1"]),
        ([{"dst": "192.0.2.0/24", "dev": "eth0"}], ["route to 192.0.2.0/24"]),
        ([{"dst": "2001:db8::/32", "dev": "eth0"}, {"dst": "fe80::/64", "dev": "eth0"}], ["route to 2001:db8::/32"]),
    ],
    ids=["shut", "default", "outside", "other-family-link-local-kept"],
)
def test_a_pods_routes_lead_only_to_the_pod_and_service_networks(
    routes: list[dict[str, Any]], expected: list[str]
) -> None:
    breaches = route_breaches(routes, ALLOWED, "ns/p")
    assert [any(words in b for b in breaches) for words in expected] == [True] * len(expected)
    assert len(breaches) == len(expected), breaches


def test_forwarding_on_is_named_and_off_passes(tmp_path: Any) -> None:
    on, off = tmp_path / "ip_forward", tmp_path / "forwarding"
    on.write_text("1\n")
    off.write_text("0\n")
    switches = read_forwarding([str(on), str(off), str(tmp_path / "absent")])
    assert switches == {str(on): "1", str(off): "0"}
    breaches = forwarding_breaches(switches)
    assert len(breaches) == 1 and breaches[0].startswith(f"{on} is 1")


def test_a_refused_endpoint_is_told_from_a_listening_one() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert not refused(f"http://127.0.0.1:{port}")
    assert refused(f"http://127.0.0.1:{port}")  # closed: nothing listens there any more


def test_the_node_configuration_the_fixture_writes_passes_every_check(tmp_path: Any) -> None:
    networks = NodeNetworks()
    assert cni_breaches(cni_network_list(networks, tmp_path / "leases"), networks.allowed) == []
    paths = ContainerdPaths(tmp_path / "containerd", runc=tmp_path / "runc", cni_bin_dir=tmp_path / "cni-bin")
    config = containerd_config(paths)
    hosts = registry_hosts(refused_port=9)
    assert registry_breaches(config, hosts) == []
    cri = tomllib.loads(config)["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True and cri["registry"]["config_path"] == str(paths.registry_hosts)
    assert cri["containerd"]["runtimes"]["runc"]["options"]["BinaryName"] == str(paths.runc)
    assert cri["netns_mounts_under_state_dir"] is True  # nothing of the node's pods left in /var/run/netns
    assert set(hosts) >= {"_default", "docker.io", "ghcr.io", "registry.k8s.io"}


ALLOWED_HINT = "may send or serve beyond the node (allowed: bind, errors, log, ready on 127.0.0.1, kubernetes with kubeconfig and pods)"
BLOCK = "CoreDNS block `cluster.local:53 in-addr.arpa:53 ip6.arpa:53`"


@pytest.mark.parametrize(
    ("extra", "bind", "expected"),
    [
        ("", "10.244.0.1", []),
        ("    forward . 8.8.8.8\n", "10.244.0.1", [f"{BLOCK}: `forward . 8.8.8.8` {ALLOWED_HINT}"]),
        ("    secondary example.org\n", "10.244.0.1", [f"{BLOCK}: `secondary example.org` {ALLOWED_HINT}"]),
        ("    health\n", "10.244.0.1", [f"{BLOCK}: `health` {ALLOWED_HINT}"]),
        ("    ready :8181\n", "10.244.0.1", [f"{BLOCK}: `ready :8181` {ALLOWED_HINT}"]),
        ("    kubernetes cluster.local {\n        endpoint https://10.0.0.9\n    }\n", "10.244.0.1",
         [f"{BLOCK}: `kubernetes.endpoint https://10.0.0.9` {ALLOWED_HINT}"]),
        ("", "0.0.0.0", [f"{BLOCK} must bind the bridge address 10.244.0.1 alone, not [['0.0.0.0']]"]),
    ],
)  # fmt: skip
def test_the_cluster_dns_answers_only_from_the_api_server_on_the_bridge(
    extra: str, bind: str, expected: list[str], tmp_path: Any
) -> None:
    text = corefile(bind, tmp_path / "kubeconfig", ready_port=8181).replace("    errors\n", f"    errors\n{extra}")
    assert dns_breaches(text, "10.244.0.1") == expected


def test_every_server_block_must_bind_the_bridge_alone() -> None:
    text = "cluster.local:53 {\n    bind 10.244.0.1\n}\n.:53 {  # a second block\n    errors\n}\n"
    assert dns_breaches(text, "10.244.0.1") == [
        "CoreDNS block `.:53` must bind the bridge address 10.244.0.1 alone, not every address"
    ]
