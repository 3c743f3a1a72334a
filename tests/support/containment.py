"""What keeps a real node's packets on this machine, checked before any pod starts (issue 20).

The project's machines must never send traffic anywhere but to themselves, and a real node (kubelet,
containerd, CNI) is made to reach out: a pod with a default route sends whatever it cannot place there,
a bridge that masquerades hands it to the host's uplink, and containerd fetches an image it does not
have from the registry the image names. Before the real-node fixture lets a pod start, every one of
those doors must be shut, and this module says which one is not, in a sentence naming the file or
setting:

- the host forwards nothing (`net.ipv4.ip_forward` and IPv6 forwarding are 0): a pod's packet that
  reaches the host is never routed on;
- the CNI network list gives pods no default route and no masquerade: only the `bridge` plugin (not a
  gateway at all: the plugin turns the host's forwarding on for a gateway bridge, seen here; no
  `ipMasq`) with `host-local` addresses, routes only to allowed networks (the pod
  subnet, the Service range), and `loopback`; any other plugin (portmap's SNAT, a firewall that opens
  forwarding) is refused rather than reasoned about;
- every registry containerd could pull from points at a local endpoint that refuses connections: the
  CRI plugin reads registry hosts from `config_path`, whose `_default/hosts.toml` (any registry not
  named) and every per-registry `hosts.toml` may name only loopback servers, and must have a `[host]`
  table (containerd 1.6 ignores a file without one and pulls from the registry itself: seen here); the deprecated `mirrors`
  and `configs` tables must be absent (they could name any host);
- the cluster DNS (CoreDNS) answers from the API server only: no plugin that sends a query to another
  server (`forward`, `grpc`, ...), and it listens on the bridge address alone;
- a running pod's routing table holds only routes to allowed networks (and IPv6 link-local ones, which
  the kernel adds to every interface and which never pass a router).

Each check is a pure function of what was read (files' text, parsed routes) returning the breaches, so
the table tests cover them without a node; `read_forwarding` and `refused` touch the machine.
"""

from __future__ import annotations

import ipaddress
import socket
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The host's forwarding switches (sysctl files) that must read 0.
FORWARDING_FILES = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")

#: CNI plugin types a contained pod network may use (anything else is refused, not reasoned about).
ALLOWED_PLUGINS = frozenset({"bridge", "loopback"})
ALLOWED_IPAM = frozenset({"host-local"})

CRI_PLUGIN = "io.containerd.grpc.v1.cri"

#: The bridge plugin's flags that open a way out, and what each does.
_BRIDGE_FLAGS = {
    # seen on the project's machine: the plugin (1.1.1) sets net.ipv4.ip_forward to 1 for a gateway bridge
    "isGateway": "the plugin turns the host's IP forwarding on; give the bridge its address yourself",
    "isDefaultGateway": "pods would get a default route",
    "ipMasq": "pods' packets would be masqueraded to the host's uplink",
    "forceAddress": "the plugin would re-address the bridge",
}

#: IPv6 link-local: on every interface, never routed beyond the link (the pod's end of its veth).
LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")


def read_forwarding(files: Iterable[str] = FORWARDING_FILES) -> dict[str, str]:
    """The forwarding switches as the host has them (a file that does not exist is left out)."""
    found = {}
    for name in files:
        path = Path(name)
        if path.exists():
            found[name] = path.read_text().strip()
    return found


def forwarding_breaches(switches: Mapping[str, str]) -> list[str]:
    """A sentence per forwarding switch that is on."""
    return [
        f"{name} is {value}: the host would route pods' packets on (set it to 0)"
        for name, value in switches.items()
        if value != "0"
    ]


def _networks(cidrs: Iterable[str]) -> list[Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def _inside(destination: str, allowed: Sequence[Network]) -> bool:
    try:
        network = ipaddress.ip_network(destination, strict=False)
    except ValueError:
        return False
    return any(network.version == a.version and network.subnet_of(a) for a in allowed)  # type: ignore[arg-type]


def cni_breaches(
    network_list: Mapping[str, Any], allowed_cidrs: Iterable[str], source: str = "the CNI config"
) -> list[str]:
    """A sentence per way the CNI network list (`.conflist`, parsed) could give a pod a way out."""
    allowed = _networks(allowed_cidrs)
    plugins = network_list.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        return [f"{source}: no `plugins` list (a .conflist is expected)"]
    breaches = []
    for index, plugin in enumerate(plugins):
        where = f"{source}: plugins[{index}]"
        kind = plugin.get("type")
        if kind not in ALLOWED_PLUGINS:
            breaches.append(f"{where} is of type {kind!r}; only {', '.join(sorted(ALLOWED_PLUGINS))} are allowed")
            continue
        if kind != "bridge":
            continue
        for flag, why in _BRIDGE_FLAGS.items():
            if plugin.get(flag):
                breaches.append(f"{where}.{flag} is true: {why} (set it to false)")
        ipam = plugin.get("ipam") or {}
        if ipam.get("type") not in ALLOWED_IPAM:
            breaches.append(f"{where}.ipam.type is {ipam.get('type')!r}; only host-local is allowed")
        for number, route in enumerate(ipam.get("routes") or []):
            destination = str(route.get("dst", ""))
            if not _inside(destination, allowed):
                breaches.append(
                    f"{where}.ipam.routes[{number}] sends {destination or '(no dst)'} out; only routes inside "
                    f"{', '.join(map(str, allowed))} are allowed"
                )
    return breaches


def _loopback_host(url: str) -> bool:
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hosts_toml_breaches(text: str, source: str) -> list[str]:
    """A sentence per server in a containerd `hosts.toml` that is not on loopback."""
    try:
        hosts = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return [f"{source}: not TOML ({error})"]
    breaches = []
    server = hosts.get("server")
    if server is None:
        breaches.append(f"{source}: no `server`; containerd would use the registry the image names")
    elif not _loopback_host(str(server)):
        breaches.append(f"{source}: server {server!r} is not on loopback")
    if not isinstance(hosts.get("host"), dict) or not hosts["host"]:
        # containerd 1.6 rejects such a file ("invalid `host` tree") and pulls from the registry itself
        breaches.append(f'{source}: no [host."..."] table; containerd 1.6 would ignore the file and pull directly')
    for name in hosts.get("host") or {}:
        if not _loopback_host(name):
            breaches.append(f"{source}: [host.{name!r}] is not on loopback")
    return breaches


def registry_breaches(
    config_text: str, hosts_files: Mapping[str, str], source: str = "containerd's config"
) -> list[str]:
    """A sentence per way containerd (config.toml's text, and the `hosts.toml` files under its registry
    `config_path` by registry folder name) could fetch an image from another machine."""
    try:
        config = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as error:
        return [f"{source}: not TOML ({error})"]
    registry = config.get("plugins", {}).get(CRI_PLUGIN, {}).get("registry", {})
    breaches = []
    for table in ("mirrors", "configs"):
        if registry.get(table):
            breaches.append(f"{source}: plugins.{CRI_PLUGIN!r}.registry.{table} is set; use config_path only")
    if not registry.get("config_path"):
        breaches.append(f"{source}: plugins.{CRI_PLUGIN!r}.registry.config_path is not set")
    if "_default" not in hosts_files:
        breaches.append(f"{source}: no _default/hosts.toml under config_path; a registry not named would be reached")
    for folder, text in sorted(hosts_files.items()):
        breaches += hosts_toml_breaches(text, f"{folder}/hosts.toml")
    return breaches


def refused(url: str, timeout: float = 1.0) -> bool:
    """Whether a connection to `url`'s host and port is refused at once (nothing listens there)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def route_breaches(routes: Iterable[Mapping[str, Any]], allowed_cidrs: Iterable[str], pod: str) -> list[str]:
    """A sentence per route of a pod (as `ip -j route` prints them) that leads outside the allowed
    networks; a default route above all."""
    allowed = _networks(allowed_cidrs)
    breaches = []
    for route in routes:
        destination = str(route.get("dst", ""))
        if _inside(destination, [LINK_LOCAL_V6]):
            continue
        if destination == "default" or not _inside(destination, allowed):
            via = f" via {route['gateway']}" if route.get("gateway") else ""
            breaches.append(f"pod {pod}: route to {destination}{via} leads off the pod and Service networks")
    return breaches


#: What a server block of the node's Corefile may hold, and nothing else (an allow-list: CoreDNS has many
#: plugins that send or serve beyond the node, `forward`, `secondary`, `dnstap`, `health` on every address...).
ALLOWED_DNS_DIRECTIVES = ("bind", "errors", "log", "ready", "kubernetes")
#: The options the `kubernetes` plugin may have (no `endpoint`: it would name another API server).
ALLOWED_KUBERNETES_OPTIONS = ("kubeconfig", "pods")


def corefile_blocks(corefile: str) -> list[tuple[str, list[list[str]]]]:
    """(keys, directives) of each server block, each directive as its words; a plugin's own block adds its
    options as directives named `plugin.option` (`kubernetes.kubeconfig PATH`). Comments dropped."""
    blocks: list[tuple[str, list[list[str]]]] = []
    depth, plugin = 0, ""
    for line in corefile.splitlines():
        words = line.split("#", 1)[0].replace("{", " { ").replace("}", " } ").split()
        body = [word for word in words if word not in ("{", "}")]
        if body and depth == 0:
            blocks.append((" ".join(body), []))
        elif body and depth == 1:
            blocks[-1][1].append(body)
            plugin = body[0]
        elif body:
            blocks[-1][1].append([f"{plugin}.{body[0]}", *body[1:]])
        depth += words.count("{") - words.count("}")
    return blocks


def dns_breaches(corefile: str, bridge_address: str) -> list[str]:
    """What in a Corefile would send a query off the machine, or serve anything beyond the node's bridge:
    every server block binds the bridge address alone, reports readiness on loopback only, and answers
    from the API server (its kubeconfig) and nothing else."""
    breaches = []
    for keys, directives in corefile_blocks(corefile):
        binds = [words[1:] for words in directives if words[0] == "bind"]
        if binds != [[bridge_address]]:
            breaches.append(f"CoreDNS block `{keys}` must bind the bridge address {bridge_address} alone, "
                            f"not {binds or 'every address'}")  # fmt: skip
        for words in directives:
            name, _, option = words[0].partition(".")
            if option:
                allowed = name == "kubernetes" and option in ALLOWED_KUBERNETES_OPTIONS
            elif name == "ready":
                allowed = len(words) == 2 and words[1].startswith("127.0.0.1:")
            else:
                allowed = name in ALLOWED_DNS_DIRECTIVES
            if not allowed:
                breaches.append(f"CoreDNS block `{keys}`: `{' '.join(words)}` may send or serve beyond the node "
                                "(allowed: bind, errors, log, ready on 127.0.0.1, kubernetes with kubeconfig and pods)")  # fmt: skip
    return breaches
