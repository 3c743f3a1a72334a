"""The iptables chains a kubelet and kube-proxy make (KUBE-*): found, and removed with the rules that
jump to them, so that a real node's stop leaves the machine as it was (kube-proxy --cleanup leaves the
kubelet's own). tests/support/realnode.py refuses to start on a machine that has such chains already."""

from __future__ import annotations

import shlex

from tests.support.commands import run_tool as _run


def kube_chains() -> list[str]:
    """The KUBE-* iptables chains on this machine (IPv4 and IPv6, every table)."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        found += [line[1:].split()[0] for line in _run(tool).stdout.splitlines() if line.startswith(":KUBE-")]
    return found


def remove_kube_chains() -> None:
    """The iptables chains the kubelet and kube-proxy made (KUBE-*), and the rules that jump to them, in
    every table, IPv4 and IPv6: the machine is left as it was (kube-proxy --cleanup leaves the kubelet's)."""
    for tool in ("iptables", "ip6tables"):
        table = ""
        chains: dict[str, list[str]] = {}
        jumps: list[tuple[str, list[str]]] = []
        for line in _run(f"{tool}-save").stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":KUBE-"):
                chains.setdefault(table, []).append(line[1:].split()[0])
            elif line.startswith("-A ") and "KUBE-" in line and not line.split()[1].startswith("KUBE-"):
                jumps.append((table, shlex.split(line)[1:]))
        for where, rule in jumps:
            _run(tool, "-t", where, "-D", *rule)
        for where, names in chains.items():
            for name in names:
                _run(tool, "-t", where, "-F", name)
            for name in names:
                _run(tool, "-t", where, "-X", name)
