"""What makes the process kubelet the nodes of a real control plane: Node objects and their heartbeat.

A kubelet registers a Node (capacity, addresses, a Ready condition), then proves it is alive by renewing
its Lease in `kube-node-lease` every few seconds and refreshing its status now and then. The scheduler
binds pods only to Ready, untainted nodes with room; the node-lifecycle controller marks a node whose
Lease stops being renewed NotReady (Unknown) and taints it `node.kubernetes.io/unreachable`, as after a
real node loss. `NodeAgent.stop_heartbeat()` is that loss, on demand. `ScheduledKubelet.silence_node()`
is the other silence: the kubelet loses the API server while its machine, and every process on it, runs on
(a control-plane or network outage); what it has to report waits until `resume_node()`.

Capacity is what the tests need, not this machine's: 16 CPUs, 64 GiB and 8 fake `nvidia.com/gpu` (so
GPU-requesting pods can be scheduled; nothing here uses a GPU).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.api_outage import check_available, until_answered
from tests.e2e.kubelet import ProcessKubelet
from tests.e2e.pod_status import PodRuntime
from tests.support.controlplane import KUBERNETES_VERSION
from tests.support.kubeapi import KubeApi

logger = logging.getLogger(__name__)

NODES = "v1/nodes"
LEASES = "coordination.k8s.io/v1/leases"
LEASE_NAMESPACE = "kube-node-lease"
#: Seconds between two Lease renewals (a kubelet: 10 s, a quarter of its 40 s lease).
RENEW_SECONDS = 1.0
LEASE_SECONDS = 40
#: Seconds between two status heartbeats (a kubelet: 5 min when nothing changes; shorter here).
STATUS_SECONDS = 10.0
CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "100Gi"}
#: Seconds between two looks of a silenced node's pending status write at whether it may be sent.
SILENT_WRITE_POLL = 0.2


def _now(micro: bool = False) -> str:
    moment = datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if micro else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_status(ready: bool = True) -> dict[str, Any]:
    now = _now()
    conditions = [
        {"type": kind, "status": "False", "reason": f"KubeletHas{reason}", "lastHeartbeatTime": now,
         "lastTransitionTime": now, "message": "kubelet has no pressure"}
        for kind, reason in (("MemoryPressure", "SufficientMemory"), ("DiskPressure", "NoDiskPressure"),
                             ("PIDPressure", "SufficientPID"))
    ]  # fmt: skip
    conditions.append(
        {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady", "lastHeartbeatTime": now,
         "lastTransitionTime": now, "message": "the process kubelet is posting ready status"}
    )  # fmt: skip
    return {
        "capacity": CAPACITY,
        "allocatable": CAPACITY,
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "nodeInfo": {
            "kubeletVersion": KUBERNETES_VERSION, "kubeProxyVersion": KUBERNETES_VERSION, "operatingSystem": "linux",
            "architecture": "amd64", "containerRuntimeVersion": "process://0", "kernelVersion": "", "osImage": "",
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    }  # fmt: skip


class NodeAgent:
    """Registers node `name` and keeps it alive until `stop_heartbeat()` or `stop()`."""

    def __init__(self, api: KubeApi, name: str) -> None:
        self.api = api
        self.name = name
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"node-{name}", daemon=True)
        self.uid = ""

    def start(self) -> NodeAgent:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        code, body = self.api.create(NODES, None, {"metadata": {"name": self.name, "labels": labels}})
        if code == 409:
            body = self.api.get(NODES, None, self.name) or {}
        elif code >= 300:
            raise RuntimeError(f"cannot register node {self.name}: HTTP {code}: {body}")
        self.uid = body["metadata"]["uid"]
        self._post_status()
        self._renew()
        self._thread.start()
        return self

    def stop_heartbeat(self) -> None:
        """The node goes silent: no more Lease renewals or status updates (its pods keep running)."""
        self._stopped.set()
        self._thread.join(10)

    stop = stop_heartbeat

    def _heartbeat(self) -> None:
        last_status = 0.0
        while not self._stopped.wait(RENEW_SECONDS):
            try:
                self._renew()
                last_status += RENEW_SECONDS
                if last_status >= STATUS_SECONDS:
                    self._post_status()
                    last_status = 0.0
            except Exception as error:  # a heartbeat must outlive a server hiccup, as a kubelet's does
                logger.warning("node %s: heartbeat failed: %r", self.name, error)

    def _post_status(self) -> None:
        code, body = self.api.patch(NODES, None, self.name, {"status": node_status()}, "status")
        if code >= 300:
            raise RuntimeError(f"node {self.name}: status update refused: HTTP {code}: {body}")

    def _renew(self) -> None:
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _now(micro=True)}
        code, _ = self.api.patch(LEASES, LEASE_NAMESPACE, self.name, {"spec": spec})
        if code == 404:
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
            lease = {"metadata": {"name": self.name, "ownerReferences": [owner]}, "spec": spec}
            code, body = self.api.create(LEASES, LEASE_NAMESPACE, lease)
            if code >= 300 and code != 409:
                raise RuntimeError(f"node {self.name}: lease refused: HTTP {code}: {body}")


class ScheduledKubelet(ProcessKubelet):
    """The process kubelet as the nodes of a real control plane: it registers `node_names` (each with its
    own heartbeat), runs only the pods the scheduler bound to one of them, and, once a deleted pod's
    container has stopped, confirms the deletion as a kubelet does (DELETE with grace 0, by uid)."""

    def __init__(
        self, api: KubeApi, ca_file: Path, root: Path, base_env: Mapping[str, str], node_names: list[str]
    ) -> None:
        super().__init__(api.server, root, base_env, node_name=node_names[0])
        self.api = api
        self.ca_file = ca_file
        self.nodes = {name: NodeAgent(api, name) for name in node_names}
        self.dead_nodes: set[str] = set()
        self.silent_nodes: set[str] = set()
        """Nodes cut off from the API server with their processes running (`silence_node`)."""
        self.held_events: list[tuple[str, dict[str, Any]]] = []
        """Pod watch events for silent nodes, in order: a cut-off kubelet sees none until it reports again."""

    def start(self) -> ScheduledKubelet:
        for agent in self.nodes.values():
            agent.start()
        super().start()
        return self

    def stop(self, timeout: float = 30) -> None:
        for agent in self.nodes.values():
            agent.stop()
        super().stop(timeout)

    async def _stop(self) -> None:
        """Stop as the process kubelet does, then cancel what is left on its loop (connections still being
        forwarded, waits of pods that were running): nothing is left pending or unclosed at exit."""
        await super()._stop()
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await asyncio.sleep(0.25)  # closed transports release their sockets on the loop's next turns

    def stop_heartbeat(self, node_name: str) -> None:
        """The node stops renewing its Lease (its pods' processes keep running)."""
        self.nodes[node_name].stop_heartbeat()

    def lose_node(self, node_name: str) -> list[str]:
        """Node loss: the node goes silent and everything on it dies with it. Its containers are killed and
        nothing more is reported for its pods (no terminated state, no confirmed deletion: a dead node
        tells nobody), so its pods stay Running, then Terminating, in the API until someone force-deletes
        them. Returns the names of the pods that were on it."""
        self.dead_nodes.add(node_name)
        self.stop_heartbeat(node_name)
        lost = [runtime for runtime in list(self.pods.values()) if self._node_of(runtime.pod) == node_name]
        for runtime in lost:
            self._kill_group(runtime, signal.SIGKILL)
        return sorted(runtime.name for runtime in lost)

    def silence_node(self, node_name: str) -> None:
        """The node's kubelet loses the API server; the machine and its pods' processes run on. No Lease
        renewal, no status: each status write (or deletion confirmed) of its pods waits until it reports
        again, as a kubelet's retries do; and it hears nothing of its pods either (a pod deleted meanwhile,
        force-deleted included, keeps running until the node is back)."""
        self.silent_nodes.add(node_name)
        self.stop_heartbeat(node_name)

    def resume_node(self, node_name: str) -> None:
        """A silenced node reaches the API server again: its heartbeat, the pod events it missed (in order:
        a pod deleted meanwhile is stopped now), then the writes held meanwhile."""
        self.nodes[node_name] = NodeAgent(self.api, node_name).start()
        self._call(self._hear_again(node_name))

    async def _hear_again(self, node_name: str) -> None:
        self.silent_nodes.discard(node_name)
        missed = [(kind, pod) for kind, pod in self.held_events if self._node_of(pod) == node_name]
        self.held_events = [(kind, pod) for kind, pod in self.held_events if self._node_of(pod) != node_name]
        for kind, pod in missed:
            self._on_event(kind, pod)

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        if self._node_of(pod) in self.silent_nodes:
            self.held_events.append((kind, pod))
            return
        super()._on_event(kind, pod)

    async def _while_silent(self, runtime: PodRuntime) -> None:
        while self._node_of(runtime.pod) in self.silent_nodes:
            await asyncio.sleep(SILENT_WRITE_POLL)

    def revive_node(self, node_name: str, timeout: float = 60) -> None:
        """The node comes back, empty (a replaced machine): it reports Ready again and runs new pods. Returns
        once the node-lifecycle controller has lifted its NotReady/unreachable taints (until then the
        scheduler avoids it and the taint manager evicts what lands on it)."""
        self.dead_nodes.discard(node_name)
        self.nodes[node_name] = NodeAgent(self.api, node_name).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            taints = ((self.api.get(NODES, None, node_name) or {}).get("spec") or {}).get("taints") or []
            if not any(t.get("key", "").startswith("node.kubernetes.io/") for t in taints):
                return
            time.sleep(0.5)
        raise AssertionError(f"node {node_name} still tainted {timeout:.0f}s after it came back: {taints}")

    @staticmethod
    def _node_of(pod: Mapping[str, Any]) -> str | None:
        node: str | None = (pod.get("spec") or {}).get("nodeName")
        return node

    async def _write_status(
        self, runtime: PodRuntime, phase: str, state: Mapping[str, Any], ip: str, ready: bool = False
    ) -> None:
        await self._while_silent(runtime)
        if self._node_of(runtime.pod) not in self.dead_nodes:
            await super()._write_status(runtime, phase, state, ip, ready)

    def _session_options(self) -> dict[str, Any]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return {
            "headers": {"Authorization": f"Bearer {self.api.token}"},
            "connector": aiohttp.TCPConnector(ssl=context),
        }

    def _accepts(self, pod: Mapping[str, Any]) -> bool:
        node = self._node_of(pod)
        return node in self.nodes and node not in self.dead_nodes

    async def _bind(self, runtime: PodRuntime) -> bool:
        """The scheduler bound it already; report the sandbox being made (its IP known)."""
        ip = self._network(runtime.pod).ip
        await self._write_status(runtime, "Pending", {"waiting": {"reason": "ContainerCreating"}}, ip=ip)
        return True

    async def _release(self, runtime: PodRuntime) -> None:
        await self._while_silent(runtime)
        if runtime.vanished or self._node_of(runtime.pod) in self.dead_nodes:
            return
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": runtime.pod["metadata"]["uid"]}}

        async def confirm() -> None:
            assert self._session is not None
            async with self._session.delete(self._pod_url(runtime), json=options) as response:
                check_available(response)
                if response.status >= 300 and response.status not in (404, 409):
                    logger.warning("kubelet: cannot confirm the deletion of %s: HTTP %s", runtime.name, response.status)

        await until_answered(confirm)
