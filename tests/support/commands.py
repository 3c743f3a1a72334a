"""A machine tool run by the test support (iptables, ctr, ip, ...): its output kept, a failure left to the
caller, and a tool that hangs turned into a sentence instead of a stuck suite."""

from __future__ import annotations

import subprocess


def run_tool(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `argv` to its end (exit status not checked); RuntimeError when it outlasts `timeout` seconds."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"`{' '.join(argv)}` did not finish within {timeout:g} s: the machine is overloaded or stuck"
        ) from None
