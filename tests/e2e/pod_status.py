"""What the process kubelet keeps per pod and reports for it, and the loopback plumbing it uses.

Split from `kubelet.py` (the watch loop and process life cycle) so each stays small: the pod's runtime
record, the pod status a kubelet writes (pure), and TCP forwarding from a pod's own loopback address to
the port its process really listens on (which a test may deny, see netfilter.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from tests.e2e.netfilter import INGRESS, drop

#: Condition types the kubelet owns and rewrites; others (e.g. DisruptionTarget) are kept.
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready", "PodScheduled")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def shell_exit_code(returncode: int) -> int:
    """Python's -N for "killed by signal N" as a container runtime reports it (128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class PodRuntime:
    """What the kubelet keeps about one pod."""

    namespace: str
    name: str
    pod: dict[str, Any]
    dir: Path
    deleted: asyncio.Event = field(default_factory=asyncio.Event)
    """The pod has a deletionTimestamp, or vanished."""
    vanished: bool = False
    """The pod is gone from the API (force-deleted or never bound)."""
    process: asyncio.subprocess.Process | None = None
    oom: bool = False
    started_at: str | None = None
    exit_code: int | None = None
    task: asyncio.Task[None] | None = None
    forwarders: list[asyncio.Server] = field(default_factory=list)

    @property
    def log_file(self) -> Path:
        return self.dir / "container.log"


def pod_status(
    runtime: PodRuntime, current: Mapping[str, Any], phase: str, state: Mapping[str, Any], ip: str, ready: bool
) -> dict[str, Any]:
    """The status a kubelet reports for the pod: phase, conditions (others' kept), one container's state."""
    stamp = now()
    kept = [c for c in (current.get("status") or {}).get("conditions") or [] if c["type"] not in KUBELET_CONDITIONS]
    started = phase != "Pending"
    conditions = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
        {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
        {"type": "PodReadyToStartContainers", "status": str(started), "lastTransitionTime": stamp},
        {"type": "ContainersReady", "status": str(ready), "lastTransitionTime": stamp},
        {"type": "Ready", "status": str(ready), "lastTransitionTime": stamp},
    ]
    container = runtime.pod["spec"]["containers"][0]
    status = {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": runtime.started_at or stamp,
        "conditions": conditions + kept,
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "imageID": "",
                "ready": ready,
                "started": "running" in state,
                "restartCount": 0,
                "state": dict(state),
            }
        ],
    }
    return status


def signal_container(pid: int, sig: int) -> None:
    """Signal every process of a container whose main process is `pid`: its process group and every
    descendant, also those in a session of their own (torch's elastic agent starts each rank in a new
    session), as a container runtime signals everything in the container's cgroup. Descendants are listed
    before anything is signalled: once the main process dies they are re-parented and lost from view."""
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for process in descendants:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            process.send_signal(sig)


async def forward_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    """Pass one connection on to 127.0.0.1:`port`, both ways, until either side closes; unless a test
    denies the pod address and port (netfilter.INGRESS, a NetworkPolicy's effect): then nothing passes."""
    local = writer.get_extra_info("sockname") or ("", 0)
    if INGRESS.denies(str(local[0]), int(local[1])):
        await drop(reader, writer)
        return
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()
        return

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()

    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
