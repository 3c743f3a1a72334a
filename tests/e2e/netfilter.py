"""What a NetworkPolicy does to a pod's port, for the process kubelet: connections that go nowhere.

The process kubelet runs every pod on this machine's loopback interface and enforces no NetworkPolicy
(there is no CNI). A scenario that needs "the operator cannot reach rank 0" makes it so here, honestly
at the network level: `INGRESS.deny(pod_ip, port)` makes the kubelet's forwarder for that pod address
and port (pod_status.forward_connection) accept connections and then drop everything, as a default-deny
policy drops packets: the client sees no answer and times out; nothing reaches the process. `allow`
lifts it. The trainer's own traffic between workers (rendezvous, Gloo) goes to the gang's host ports,
not through the forwarder, so the gang is untouched, as a policy that admits the gang leaves it.

Rules are process-wide (one host network, shared by both nodes) and thread-safe: tests set them from
their thread, the kubelet's loop reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class IngressFilter:
    """Denied (pod IP, port) pairs."""

    def __init__(self) -> None:
        self._denied: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def deny(self, ip: str, port: int) -> None:
        with self._lock:
            self._denied.add((ip, port))

    def allow(self, ip: str, port: int) -> None:
        with self._lock:
            self._denied.discard((ip, port))

    def denies(self, ip: str, port: int) -> bool:
        with self._lock:
            return (ip, port) in self._denied


#: The filter the kubelet's forwarders consult.
INGRESS = IngressFilter()


async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Swallow what the client sends and never answer, until it gives up (as dropped packets would)."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
