"""A test-only kubelet: runs the pods of an API server as local processes and reports them back.

`ProcessKubelet` plays the node: it watches pods through the HTTP API (as a kubelet does), starts each
pod's container command as a process (see `podexec` for the environment, volume and network mapping),
and writes the pod status a real kubelet writes: phase, PodScheduled/Initialized/ContainersReady/Ready
conditions, podIP, and per container `waiting` / `running` / `terminated{exitCode, reason, message,
startedAt, finishedAt}`. The operator under test classifies failures from exactly these fields. On the
emulated API server it binds every pod to itself; on the real control plane `node.ScheduledKubelet`
registers Nodes and runs only the pods the scheduler bound to them.

Deletion follows Kubernetes' graceful termination: a DELETE only marks a pod on a node
(deletionTimestamp; the emulator keeps it with a "kubelet" finalizer); the kubelet sends SIGTERM to the
container's main process, waits `deletionGracePeriodSeconds` (else `terminationGracePeriodSeconds`,
default 30), SIGKILLs every process of the container, reports the terminated state and releases the pod.

The pod IP (a loopback address of its own, see `podexec.Network`) answers on every declared
containerPort (forwarded to the gang's host port), so the operator reaches `http://<pod IP>:9400/progress`.
Pods are told apart by uid, as a kubelet does: a pod re-created under the same name is a new pod.
Test hooks for what a test cannot cause for real: `kill(pod, signal)`; `oom_kill(pod)` (SIGKILL and
reason OOMKilled, as the OOM killer plus the runtime). Only `restartPolicy: Never` (all kubetune pods).
Its reads and writes wait out an API server that is away for a while (api_outage.py), as a kubelet's do.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e import podexec
from tests.e2e.api_outage import check_available, until_answered
from tests.e2e.pod_status import PodRuntime, forward_connection, now, pod_status, shell_exit_code, signal_container
from tests.support.apiserver import KUBELET_FINALIZER

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 30.0
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class ProcessKubelet:
    """One node that runs every pod of the API server at `server` as local processes.

    root: folder for pod folders (`pods/<ns>/<name>`) and PVCs (`claims/<ns>/<claim>`).
    base_env: the "image" environment every container starts from (PATH to the project's venv, ...).
    """

    def __init__(self, server: str, root: Path, base_env: Mapping[str, str], node_name: str = "e2e-node") -> None:
        self.server = server.rstrip("/")
        self.root = root
        self.base_env = dict(base_env)
        self.node_name = node_name
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        self.gang_ports: dict[tuple[str, str, str], dict[int, int]] = {}
        self.history: list[tuple[str, str, str]] = []
        """(namespace, pod name, event) for each process start and end, in order: for assertions."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="e2e-kubelet", daemon=True)
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None

    # -- lifecycle (called from the test thread) ------------------------------------------------------

    def start(self) -> ProcessKubelet:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Kill every process still running and stop watching."""
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- test hooks -------------------------------------------------------------------------------------
    def kill(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal every process of the pod's container (as `kill` inside the container would)."""
        self._call(self._signal(namespace, name, sig, oom=False))

    def oom_kill(self, namespace: str, name: str) -> None:
        """Kill the container as the OOM killer does: SIGKILL to all its processes, reason OOMKilled."""
        self._call(self._signal(namespace, name, signal.SIGKILL, oom=True))

    def running(self) -> list[tuple[str, str]]:
        """(namespace, name) of pods whose container process is alive now."""
        return sorted(key for key, pod in self.pods.items() if pod.process and pod.process.returncode is None)

    def log(self, namespace: str, name: str) -> str:
        path = self.root / "pods" / namespace / name / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def claim_dir(self, namespace: str, claim: str) -> Path:
        """The host folder of a PersistentVolumeClaim (created on first use; outlives pods)."""
        folder = self.root / "claims" / namespace / claim
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- internals ----------------------------------------------------------------------------------------

    async def _start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        self._session = aiohttp.ClientSession(timeout=timeout, **self._session_options())
        self._watcher = asyncio.get_running_loop().create_task(self._watch_forever())

    async def _stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
        for runtime in list(self.pods.values()):
            self._kill_group(runtime, signal.SIGKILL)
            if runtime.task:
                runtime.task.cancel()
            for server in runtime.forwarders:  # a running pod's ports (its task, cancelled, closes none)
                server.close()
        for runtime in list(self.pods.values()):
            if runtime.process:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(runtime.process.wait(), 10)
        if self._session:
            await self._session.close()
            await asyncio.sleep(0.25)  # TLS transports finish closing on the loop (aiohttp: graceful shutdown)

    async def _signal(self, namespace: str, name: str, sig: int, oom: bool) -> None:
        runtime = self.pods.get((namespace, name))
        if runtime is None or runtime.process is None or runtime.process.returncode is not None:
            raise LookupError(f"pod {namespace}/{name} has no running container")
        runtime.oom = runtime.oom or oom
        self._kill_group(runtime, sig)

    @staticmethod
    def _kill_group(runtime: PodRuntime, sig: int) -> None:
        if runtime.process is not None:  # every process of the container, ranks in sessions of their own too
            signal_container(runtime.process.pid, sig)

    # -- what differs on a real control plane (overridden by tests/e2e/node.ScheduledKubelet) ------------

    def _session_options(self) -> dict[str, Any]:
        """Credentials and TLS for the API server (the emulator needs none)."""
        return {}

    def _accepts(self, pod: Mapping[str, Any]) -> bool:
        """Whether this kubelet runs `pod` (here: every pod; it binds them itself)."""
        return True

    async def _watch_forever(self) -> None:
        assert self._session is not None
        while True:
            try:
                async with self._session.get(f"{self.server}/api/v1/pods", params={"watch": "true"}) as response:
                    response.raise_for_status()
                    async for line in response.content:
                        if line.strip():
                            event = json.loads(line)
                            self._on_event(event.get("type", ""), event.get("object") or {})
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the watch reconnects, as a kubelet's informer does
                logger.debug("pod watch ended: %r", error)
            await asyncio.sleep(0.2)

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        metadata = pod.get("metadata") or {}
        key = (metadata.get("namespace") or "default", metadata.get("name", ""))
        runtime = self.pods.get(key)
        if runtime is not None and runtime.pod.get("metadata", {}).get("uid") != metadata.get("uid"):
            if kind == "DELETED" or not runtime.vanished:
                return  # an old namesake's late event; or a new one while the old pod is not gone yet
            if runtime.task is not None and not runtime.task.done():  # start it once the old one has ended
                return runtime.task.add_done_callback(lambda _: self._on_event(kind, pod))
            runtime = None
        if kind == "DELETED":
            if runtime is not None:
                runtime.vanished = True
                runtime.deleted.set()
            return
        if kind not in ("ADDED", "MODIFIED"):
            return
        if runtime is None:
            if not self._accepts(pod):
                return
            if metadata.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return  # an old pod seen again after a reconnect
            runtime = PodRuntime(key[0], key[1], pod, self.root / "pods" / key[0] / key[1])
            self.pods[key] = runtime
            runtime.task = asyncio.get_running_loop().create_task(self._run_pod(runtime))
            return
        runtime.pod = pod
        if metadata.get("deletionTimestamp"):
            runtime.deleted.set()

    # -- one pod ------------------------------------------------------------------------------------------

    async def _run_pod(self, runtime: PodRuntime) -> None:
        try:
            if not await self._bind(runtime):
                return
            plan = await self._prepare(runtime)
            if plan is not None:
                await self._run_container(runtime, plan)
            await runtime.deleted.wait()
            await self._release(runtime)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("kubelet: pod %s/%s", runtime.namespace, runtime.name)
        finally:
            self._kill_group(runtime, signal.SIGKILL)

    def _pod_url(self, runtime: PodRuntime, subresource: str = "") -> str:
        tail = f"/{subresource}" if subresource else ""
        return f"{self.server}/api/v1/namespaces/{runtime.namespace}/pods/{runtime.name}{tail}"

    async def _get(self, url: str) -> dict[str, Any] | None:
        async def get() -> dict[str, Any] | None:
            assert self._session is not None
            async with self._session.get(url) as response:
                check_available(response)
                return dict(await response.json()) if response.status < 300 else None

        return await until_answered(get)

    async def _patch(self, url: str, body: Mapping[str, Any]) -> bool:
        """Merge-patch `url` once the server answers; False if refused (gone, or changed since `body`'s version)."""

        async def patch() -> bool:
            assert self._session is not None
            async with self._session.patch(url, data=json.dumps(body), headers=MERGE_PATCH) as response:
                check_available(response)
                if response.status >= 300 and response.status not in (404, 409):
                    logger.debug("kubelet: PATCH %s: HTTP %s", url, response.status)
                return response.status < 300

        return await until_answered(patch)

    async def _bind(self, runtime: PodRuntime) -> bool:
        """Schedule the pod onto this node and take the finalizer that makes its deletion graceful."""
        finalizers = list(runtime.pod.get("metadata", {}).get("finalizers") or [])
        body: dict[str, Any] = {"spec": {"nodeName": self.node_name}, "metadata": {"finalizers": finalizers}}
        finalizers += [] if KUBELET_FINALIZER in finalizers else [KUBELET_FINALIZER]
        if not await self._patch(self._pod_url(runtime), body):
            return False
        ip = self._network(runtime.pod).ip
        await self._write_status(runtime, "Pending", {"waiting": {"reason": "ContainerCreating"}}, ip=ip)
        return True

    def _network(self, pod: Mapping[str, Any]) -> podexec.Network:
        return podexec.network_of(pod, self.gang_ports)

    async def _lookup_all(self, namespace: str) -> dict[tuple[str, str, str], dict[str, str]]:
        found: dict[tuple[str, str, str], dict[str, str]] = {}
        for kind, plural in (("ConfigMap", "configmaps"), ("Secret", "secrets")):
            listing = await self._get(f"{self.server}/api/v1/namespaces/{namespace}/{plural}")
            for item in (listing or {}).get("items") or []:
                name = item.get("metadata", {}).get("name", "")
                data = dict(item.get("data") or {})
                if kind == "Secret":
                    data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                found[(kind, namespace, name)] = data
        return found

    async def _prepare(self, runtime: PodRuntime) -> podexec.ProcessPlan | None:
        """The container's plan, retrying while a ConfigMap/Secret it needs is missing."""
        containers = runtime.pod.get("spec", {}).get("containers") or []
        if len(containers) != 1 or runtime.pod["spec"].get("initContainers"):
            raise NotImplementedError("the test kubelet runs pods with exactly one container and no init containers")
        network = self._network(runtime.pod)
        while not runtime.deleted.is_set():
            known = await self._lookup_all(runtime.namespace)
            try:
                return podexec.plan_container(
                    runtime.pod,
                    containers[0],
                    pod_dir=runtime.dir,
                    claims_dir=self.root / "claims",
                    network=network,
                    lookup=lambda kind, ns, name, known=known: known.get((kind, ns, name)),
                    base_env=self.base_env,
                    node_name=runtime.pod["spec"].get("nodeName") or self.node_name,
                )
            except podexec.ContainerConfigError as error:
                waiting = {"reason": "CreateContainerConfigError", "message": str(error)}
            except podexec.VolumeNotReady as error:
                waiting = {"reason": "ContainerCreating", "message": str(error)}
            await self._write_status(runtime, "Pending", {"waiting": waiting}, ip=network.ip)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runtime.deleted.wait(), 0.5)
        return None

    async def _run_container(self, runtime: PodRuntime, plan: podexec.ProcessPlan) -> None:
        ip = self._network(runtime.pod).ip
        runtime.log_file.parent.mkdir(parents=True, exist_ok=True)
        with runtime.log_file.open("ab") as log:
            runtime.process = await asyncio.create_subprocess_exec(
                *plan.argv,
                env=plan.env,
                cwd=plan.cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # one process group = the container's processes
            )
        runtime.started_at = now()
        self.history.append((runtime.namespace, runtime.name, "started"))
        await self._expose(runtime)
        running = {"running": {"startedAt": runtime.started_at}}
        await self._write_status(runtime, "Running", running, ip=ip, ready=True)
        waiter = asyncio.ensure_future(runtime.process.wait())
        deletion = asyncio.ensure_future(runtime.deleted.wait())
        await asyncio.wait({waiter, deletion}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            await self._terminate(runtime, waiter)
        deletion.cancel()
        self._kill_group(runtime, signal.SIGKILL)  # the container's other processes end with it
        for server in runtime.forwarders:
            server.close()
        code = shell_exit_code(waiter.result())
        runtime.exit_code = code
        self.history.append((runtime.namespace, runtime.name, f"exited {code}"))
        reason = "OOMKilled" if runtime.oom else ("Completed" if code == 0 else "Error")
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": runtime.started_at,
            "finishedAt": now(),
            "containerID": f"process://{runtime.process.pid}",
        }
        message = podexec.termination_message(plan, code, runtime.log_file)
        if message:
            terminated["message"] = message
        if not runtime.vanished:
            await self._write_status(runtime, "Succeeded" if code == 0 else "Failed", {"terminated": terminated}, ip=ip)

    async def _expose(self, runtime: PodRuntime) -> None:
        """Forward <pod IP>:<containerPort> to the gang's host port (see the module docstring)."""
        network = self._network(runtime.pod)
        for container in runtime.pod["spec"]["containers"]:
            for declared in container.get("ports") or []:
                port = declared["containerPort"]
                target = network.ports[port]
                try:
                    server = await asyncio.start_server(
                        lambda r, w, target=target: forward_connection(r, w, target),
                        network.ip,
                        port,
                        reuse_address=True,
                    )
                except OSError as error:
                    logger.warning("kubelet: cannot serve %s:%s for %s: %s", network.ip, port, runtime.name, error)
                    continue
                runtime.forwarders.append(server)

    async def _terminate(self, runtime: PodRuntime, waiter: asyncio.Future[int]) -> None:
        """SIGTERM to the main process, SIGKILL to all after the grace period (at once if force-deleted)."""
        assert runtime.process is not None
        metadata, spec = runtime.pod.get("metadata", {}), runtime.pod.get("spec", {})
        grace = metadata.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds"))
        grace = DEFAULT_GRACE_SECONDS if grace is None else float(grace)
        if runtime.vanished:
            grace = 0.0
        if grace > 0:
            with contextlib.suppress(ProcessLookupError):
                runtime.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), grace)
        if not waiter.done():
            self._kill_group(runtime, signal.SIGKILL)
            await waiter

    async def _release(self, runtime: PodRuntime) -> None:
        """Remove the kubelet's finalizer: the API server then removes the pod."""
        if runtime.vanished:
            return
        current = await self._get(self._pod_url(runtime)) or runtime.pod
        finalizers = [f for f in current.get("metadata", {}).get("finalizers") or [] if f != KUBELET_FINALIZER]
        await self._patch(self._pod_url(runtime), {"metadata": {"finalizers": finalizers}})

    async def _write_status(
        self, runtime: PodRuntime, phase: str, state: Mapping[str, Any], ip: str, ready: bool = False
    ) -> None:
        """Keeps others' conditions (DisruptionTarget): written only over the version read, else read again."""
        for _ in range(10):
            current = await self._get(self._pod_url(runtime)) or runtime.pod
            version = {"resourceVersion": current.get("metadata", {}).get("resourceVersion")}
            body = {"metadata": version, "status": pod_status(runtime, current, phase, state, ip, ready)}
            if await self._patch(self._pod_url(runtime, "status"), body) or current is runtime.pod:
                return
