"""The operator benchmark's peer: Kubeflow training-operator v1.9.2, on the same real control plane.

Why it exists: bench/operator_real.py measures our operator alone, and its figures (create -> pods,
requests per job per minute, CPU, RSS) mean little without a reference. The training-operator is the
controller most clusters already run for PyTorch jobs, so it runs beside ours, driven the same way: the
benchmark plays the kubelet, and the audit log tells the peer's requests (user `PEER_USER`) from the rest.

How it runs, as shipped but for what a process outside a cluster needs:
- built once with `go install` through the Go module proxy into `<cache>/bin`; the PyTorchJob CRD is read
  at run time from the downloaded module (manifests/base/crds/kubeflow.org_pytorchjobs.yaml);
- only PyTorchJob enabled (`--enable-scheme=pytorchjob`), cluster-wide (no `--namespace`: its informers
  hold every pod and Service of the cluster, ours included), one reconcile worker, leader election off;
- client rate limit as shipped, `--kube-api-qps=20 --kube-api-burst=30`, unless `qps`/`burst` are given;
- metrics off (`--metrics-bind-address=0`, as our `--metrics-port=0`), health probes and webhook server
  on free ports. The webhook is not registered, but the certificate rotator still runs: it wants the
  Secret `training-operator-webhook-cert` in `kubeflow` (MY_POD_NAMESPACE) and a serving pair in
  /tmp/k8s-webhook-server/serving-certs (a fixed path, no flag), both made here; it logs that its
  ValidatingWebhookConfiguration is missing and goes on.
- RBAC: the part of its ClusterRole (manifests/base/rbac/role.yaml) PyTorchJob uses, secrets in a Role.
Each replica gets a pod and a headless Service of the same name (`<job>-master-0`, `<job>-worker-0`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from bench.emulated import running_status, stop_operator
from kubetune.operator.builders import DEFAULT_REQUESTS
from kubetune.operator.settings import DEFAULT_TRAINER_IMAGE
from tests.support.controlplane import ADMIN_TOKEN, ControlPlane, kubeconfig
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MODULE, VERSION = "github.com/kubeflow/training-operator", "v1.9.2"
PACKAGE = f"{MODULE}/cmd/training-operator.v1"
DEFAULT_CACHE = ROOT / ".cache" / "peer"
PEER_USER, PEER_TOKEN = "kubeflow-training-operator", "kubetune-bench-peer-token"
PEER_NAMESPACE = "kubeflow"  # where its certificate rotator wants its Secret (MY_POD_NAMESPACE, default kubeflow)
WEBHOOK_SECRET = "training-operator-webhook-cert"
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
DEFAULT_QPS, DEFAULT_BURST = 20, 30  # its client rate limit without --kube-api-qps/--kube-api-burst
JOB_LABEL = "training.kubeflow.org/job-name"
CRD_NAME = "pytorchjobs.kubeflow.org"
JOBS = "/apis/kubeflow.org/v1/namespaces/{namespace}/pytorchjobs"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
Call = Callable[[str, str, Any], Awaitable[Any]]


def build_peer(cache: Path = DEFAULT_CACHE) -> Path:
    """The training-operator binary, built with `go install` into `<cache>/bin` once."""
    binary = cache / "bin" / "training-operator.v1"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(binary.parent)}
    done = subprocess.run(["go", "install", f"{PACKAGE}@{VERSION}"], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not binary.exists():
        raise RuntimeError(
            f"`go install {PACKAGE}@{VERSION}` failed: the Go module proxy (GOPROXY) refused the module or the"
            f" build broke, so the peer cannot run:\n{done.stderr[-3000:]}"
        )
    return binary


def peer_crd(cache: Path = DEFAULT_CACHE) -> Path:
    """The PyTorchJob CRD of the downloaded module, copied into `cache`."""
    target = cache / "kubeflow.org_pytorchjobs.yaml"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
                              cwd=cache, capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"`go mod download {MODULE}@{VERSION}` failed: {done.stdout[-2000:]}{done.stderr}")
        source = Path(json.loads(done.stdout)["Dir"]) / "manifests" / "base" / "crds" / target.name
        shutil.copyfile(source, target)
    return target


def _rule(group: str, resources: list[str], verbs: str) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": resources, "verbs": verbs.split()}


def peer_cluster_role_rules() -> list[dict[str, Any]]:
    """What the peer's PyTorchJob controller and certificate rotator use, verbs as its role.yaml grants
    them (left out: the other job kinds, MPI's configmaps/serviceaccounts/roles/pods/exec, PodGroups,
    which only a gang scheduler needs, and secrets, granted by `peer_role_rules` in its namespace)."""
    every = "create delete get list patch update watch"
    return [
        _rule("kubeflow.org", ["pytorchjobs"], every),
        _rule("kubeflow.org", ["pytorchjobs/status"], "get patch update"),
        _rule("kubeflow.org", ["pytorchjobs/finalizers"], "update"),
        _rule("", ["pods"], every),
        _rule("", ["services"], "create delete get list watch"),
        _rule("", ["events"], every),
        _rule("autoscaling", ["horizontalpodautoscalers"], every),  # elastic jobs with metrics only
        _rule("admissionregistration.k8s.io", ["validatingwebhookconfigurations"], "get list update watch"),
    ]


def peer_role_rules() -> list[dict[str, Any]]:
    """The certificate rotator's Secret, in PEER_NAMESPACE only."""
    return [_rule("", ["secrets"], "get list update watch")]


def _self_signed(folder: Path) -> None:
    """A serving pair for the webhook server, which must load one to start (nothing calls it: not registered)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=training-operator.kubeflow.svc", "-keyout", "tls.key", "-out", "tls.crt"],
                   cwd=folder, check=True, capture_output=True)  # fmt: skip


async def start_peer(
    plane: ControlPlane, call: Call, folder: Path, binary: Path, qps: float | None = None, burst: int | None = None
) -> subprocess.Popen[bytes]:
    """Apply what the peer needs, start it as PEER_USER (log: folder/peer.log) and wait for its /readyz."""
    if any(value is not None and value != int(value) for value in (qps, burst)):
        raise ValueError(f"--kube-api-qps and --kube-api-burst are integers in {VERSION}, not {qps}, {burst}")
    crd = yaml.load(peer_crd(binary.parent.parent).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    await call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    # `kubectl wait` fails at once while the new CRD has no conditions yet, and its watch cache answers 429 for a
    # moment after it is Established: the peer's informer would back off a second and miss its first job's create
    deadline, wait = time.monotonic() + 60, ("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    while True:
        done = await asyncio.to_thread(plane.kubectl, *wait)
        with contextlib.suppress(RuntimeError):
            if done.returncode == 0:
                await call("GET", "/apis/kubeflow.org/v1/pytorchjobs?watch=1&resourceVersion=0&timeoutSeconds=1", None)
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the PyTorchJob CRD is not Established and watched: {done.stderr}")
        await asyncio.sleep(0.2)
    await call("POST", "/api/v1/namespaces", {"metadata": {"name": PEER_NAMESPACE}})
    await call("POST", f"/api/v1/namespaces/{PEER_NAMESPACE}/secrets", {"metadata": {"name": WEBHOOK_SECRET}})
    subject = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PEER_USER}]
    for kind, path, rules in (
        ("ClusterRole", RBAC, peer_cluster_role_rules()),
        ("Role", f"{RBAC}/namespaces/{PEER_NAMESPACE}", peer_role_rules()),
    ):
        plural = kind.lower() + "s"
        await call("POST", f"{path}/{plural}", {"metadata": {"name": PEER_USER}, "rules": rules})
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": PEER_USER}
        await call("POST", f"{path}/{plural[:-1]}bindings", {"metadata": {"name": PEER_USER}, "roleRef": ref,
                                                            "subjects": subject})  # fmt: skip
    await asyncio.to_thread(_self_signed, CERT_DIR)
    config = folder / "peer.kubeconfig"
    config.write_text(yaml.safe_dump(kubeconfig(plane.url, plane.ca_file, PEER_TOKEN, PEER_NAMESPACE)))
    health = free_port()
    command = [str(binary), "--enable-scheme=pytorchjob", "--leader-elect=false", "--metrics-bind-address=0",
               f"--health-probe-bind-address=127.0.0.1:{health}", f"--webhook-server-port={free_port()}"]  # fmt: skip
    command += [f"--kube-api-qps={int(qps)}"] if qps is not None else []
    command += [f"--kube-api-burst={int(burst)}"] if burst is not None else []
    env = {k: v for k, v in os.environ.items() if k != "KUBEFLOW_NAMESPACE"}
    env |= {"KUBECONFIG": str(config), "MY_POD_NAMESPACE": PEER_NAMESPACE}
    with (folder / "peer.log").open("wb") as log:
        peer = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90  # certificates, then the webhook server
    while not await asyncio.to_thread(_ready, f"http://127.0.0.1:{health}/readyz"):
        if peer.poll() is not None or time.monotonic() > deadline:
            await stop_operator(peer)
            raise RuntimeError(f"the peer is not ready (exit {peer.returncode}); see {folder / 'peer.log'}")
        await asyncio.sleep(0.2)
    return peer


def _ready(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)
    return False


def pytorchjob_manifest(name: str, namespace: str) -> dict[str, Any]:
    """1 Master + 1 Worker (2 pods, as job_manifest's 2 workers), sized and secured as our operator's pods.

    The peer adds an init container to the Worker (`init-pytorch`, alpine, waits for the master's name in
    DNS) with no securityContext, so a namespace enforcing the `restricted` Pod Security level refuses it:
    run these in a `baseline` namespace."""
    container = {
        "name": "pytorch",  # the container the peer configures (env, port)
        "image": DEFAULT_TRAINER_IMAGE,
        "command": ["sleep", "infinity"],
        "resources": {"requests": dict(DEFAULT_REQUESTS)},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
    }  # fmt: skip
    replica = {"replicas": 1, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [container]}}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"runPolicy": {"backoffLimit": 3}, "pytorchReplicaSpecs": {"Master": replica, "Worker": replica}},
    }


def peer_pods_of(name: str) -> list[str]:
    """The pods the peer creates for `pytorchjob_manifest(name, ...)` (each also gets a headless Service)."""
    return [f"{name}-master-0", f"{name}-worker-0"]


async def smoke(folder: Path, qps: float | None = None, burst: int | None = None, namespace: str = "peer") -> None:
    """Build, start a control plane and the peer, run two PyTorchJobs (2 pods each), print timings and RSS."""
    began = time.monotonic()
    binary = build_peer()
    print(f"binary {binary} ({time.monotonic() - began:.1f} s)")
    plane = ControlPlane(folder / "plane", users={PEER_TOKEN: PEER_USER}, scheduler=False)
    began = time.monotonic()
    plane.start(crds=ROOT / "crds")
    print(f"control plane {time.monotonic() - began:.1f} s")
    context = ssl.create_default_context(cafile=str(plane.ca_file))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip

    async def call(method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with session.request(method, plane.url + path, json=body, headers=headers) as response:
            if response.status >= 400 and response.status != 409:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {await response.text()}")
            return await response.json()

    async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> float:
        start = time.monotonic()
        while not await check():
            if (peer is not None and peer.poll() is not None) or time.monotonic() - start > timeout:
                raise RuntimeError(f"{what}: not after {timeout:.0f} s; see {folder / 'peer.log'}")
            await asyncio.sleep(0.05)
        return time.monotonic()

    peer: subprocess.Popen[bytes] | None = None
    try:
        began = time.monotonic()
        peer = await start_peer(plane, call, folder, binary, qps, burst)
        print(f"peer ready {time.monotonic() - began:.1f} s (CRD, RBAC, secret, cert, start, /readyz): {peer.args!r}")
        await call("POST", "/api/v1/namespaces", {"metadata": {"name": namespace, "labels": {
            "pod-security.kubernetes.io/enforce": "baseline"}}})  # fmt: skip

        async def has_account() -> bool:
            accounts = await call("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts")
            return any(a["metadata"]["name"] == "default" for a in accounts["items"])

        async def pods(name: str) -> set[str]:
            found = await call("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={JOB_LABEL}={name}")
            return {p["metadata"]["name"] for p in found["items"]}

        async def all_pods(name: str) -> bool:
            return set(peer_pods_of(name)) <= await pods(name)

        async def running(name: str) -> bool:
            conditions = (await call("GET", f"{JOBS.format(namespace=namespace)}/{name}")).get("status", {})
            return any(c["type"] == "Running" and c["status"] == "True" for c in conditions.get("conditions", []))

        await until("default ServiceAccount", has_account)
        for name in ("smoke", "smoke-2"):  # the first after the peer's start, then one more
            created = time.monotonic()
            await call("POST", JOBS.format(namespace=namespace), pytorchjob_manifest(name, namespace))
            posted = time.monotonic()
            seen = await until("both pods", functools.partial(all_pods, name))
            print(f"{name}: POST {posted - created:.2f} s, create -> pods {seen - created:.2f} s: {peer_pods_of(name)}")
            for pod in peer_pods_of(name):
                await call("PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod}/status", running_status())
            done = await until("Running condition", functools.partial(running, name))
            print(f"{name}: pods Running -> PyTorchJob Running {done - seen:.2f} s")
        services = await call("GET", f"/api/v1/namespaces/{namespace}/services")
        print(f"services: {sorted(s['metadata']['name'] for s in services['items'])}")
        print(f"peer RSS {psutil.Process(peer.pid).memory_info().rss / 2**20:.0f} MiB")
    finally:
        await stop_operator(peer)
        await session.close()
        plane.stop()
    errors = [line for line in (folder / "peer.log").read_text(errors="replace").splitlines() if "ERROR" in line]
    print(f"peer.log: {len(errors)} ERROR lines" + "".join(f"\n  {line[:240]}" for line in errors[:8]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Smoke-run the benchmark's peer, training-operator " + VERSION)
    parser.add_argument("--folder", type=Path, help="a new folder for the run (default: a temporary one)")
    parser.add_argument("--qps", type=float, help=f"--kube-api-qps (peer default {DEFAULT_QPS})")
    parser.add_argument("--burst", type=int, help=f"--kube-api-burst (peer default {DEFAULT_BURST})")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="kubetune-peer-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"folder {folder}")
    asyncio.run(smoke(folder, args.qps, args.burst))
