"""A free TCP port on the loopback interface, for every test and test-support module that serves or
launches something (the product keeps its own: kubetune.local.launch, kubetune.trainer.distributed)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (the OS's choice; a race with another process is possible, as with
    any such probe, and harmless on a test machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


__all__ = ["free_port"]
