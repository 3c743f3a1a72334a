"""How a pod's container becomes a local process: the pure half of the test kubelet.

A real kubelet starts a container from an image, in its own filesystem and network namespace. The test
kubelet has neither: the "image" is this machine (the project's virtual environment), and every pod
shares the loopback interface. This module turns one container of one pod into a `ProcessPlan` (argv,
environment, working directory, where the termination message will be) so that, seen from inside the
process, the pod looks as Kubernetes would run it:

- Environment: `env` (value, fieldRef of the downward API, resourceFieldRef, configMapKeyRef,
  secretKeyRef) and `envFrom`, with Kubernetes' `$(VAR)` expansion in env values, command and args.
- Filesystem: each pod gets a folder `rootfs/` laid out as the container sees it: every volumeMount is
  a symbolic link at its mountPath pointing to the volume's folder (a PersistentVolumeClaim's folder is
  per namespace and claim and outlives pods; an emptyDir is per pod; configMap/secret/downwardAPI volumes
  are files written at start). Container paths in env values and arguments are rewritten into `rootfs/`
  when they lie at or below a mountPath or the termination-message path, or are a parent folder of a
  mountPath (e.g. `KUBETUNE_PVC_ROOT=/mnt/pvc` when claims are mounted at `/mnt/pvc/<claim>`). Paths in
  files (such as a mounted ConfigMap) are not rewritten: a path in a file must be valid on this machine.
- Network (see `Network`): each pod has its own loopback address as its IP; the DNS names a headless
  Service gives pods (`<hostname>.<subdomain>[.<namespace>.svc[.cluster.local]]`) are rewritten to that
  address; and, because processes bind ports on every address, each declared containerPort is remapped
  to a free host port shared by every pod of the same subdomain (one port block per gang), in env values
  and arguments, so that two jobs' (or two attempts', which may overlap) rendezvous ports never collide.
Test images: tests/e2e/images.py. Nothing here talks to the API or starts anything; `kubelet.py` does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.operator.builders import ATTEMPT_LABEL
from tests.e2e.images import image_environment
from tests.support.ports import free_port

#: Kubernetes' default terminationMessagePath.
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
#: Kubernetes keeps at most this many bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096
#: With FallbackToLogsOnError, Kubernetes takes the last 80 lines (at most 2048 bytes) of the log.
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?P<host>{_LABEL})\.(?P<sub>{_LABEL})(\.(?P<ns>{_LABEL})\.svc(\.cluster\.local)?)?$")

#: Looks up a ConfigMap or Secret's data by (kind, namespace, name); None when it does not exist.
Lookup = Callable[[str, str, str], Mapping[str, str] | None]


class ContainerConfigError(Exception):
    """A reference the container needs is missing (kubelet reason CreateContainerConfigError)."""


class VolumeNotReady(Exception):
    """A volume's source is missing; the kubelet keeps the pod in ContainerCreating and retries."""


def pod_ip(namespace: str, hostname: str | None, subdomain: str | None, name: str) -> str:
    """The pod's loopback address: derived from its DNS identity (namespace, hostname, subdomain) when it
    has one, so a replacement pod keeps the address its predecessor had (as its DNS name does), else
    from its name. 127.0.0.0/8 is all loopback on Linux, so any such address can be bound."""
    identity = f"{namespace}/{hostname}.{subdomain}" if hostname and subdomain else f"{namespace}/{name}"
    digest = hashlib.sha256(identity.encode()).digest()
    return f"127.{digest[0]}.{digest[1]}.{digest[2] % 253 + 2}"


@dataclass
class Network:
    """Addresses and ports of one pod's process.

    `ports` maps each containerPort declared by the pod to the host port its gang really uses; it is
    shared by all pods of one subdomain (the kubelet keeps one per gang). Only one pod of a gang may
    listen on a given declared port (true of torchrun's rendezvous, hosted by node 0, and of rank 0's
    metrics server)."""

    namespace: str
    ip: str
    subdomain: str | None = None
    """The pod's own subdomain: `<host>.<subdomain>` (no namespace) resolves only for it."""
    ports: dict[int, int] = field(default_factory=dict)

    def resolve(self, name: str) -> str | None:
        """The address a cluster DNS name stands for: `<host>.<sub>.<ns>.svc[.cluster.local]`, or
        `<host>.<own subdomain>` (the search path of the pod's namespace); None for any other text."""
        match = _DNS_NAME.match(name)
        if not match or (not match.group("ns") and match.group("sub") != self.subdomain):
            return None
        return pod_ip(match.group("ns") or self.namespace, match.group("host"), match.group("sub"), "")

    def port(self, text: str) -> str:
        mapped = self.ports.get(int(text)) if text.isdigit() else None
        return str(mapped) if mapped is not None else text


def network_of(pod: Mapping[str, Any], gang_ports: dict[tuple[str, str, str], dict[int, int]]) -> Network:
    """The pod's loopback IP and its gang's port map (each containerPort -> a free host port, shared by the
    pods of one headless Service and attempt label: an earlier attempt still running keeps its own ports)."""
    metadata, spec = pod.get("metadata", {}), pod.get("spec", {})
    namespace, attempt = metadata.get("namespace") or "default", (metadata.get("labels") or {}).get(ATTEMPT_LABEL, "")
    hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
    gang = gang_ports.setdefault((namespace, subdomain or metadata.get("name", ""), attempt), {})
    for container in spec.get("containers") or []:
        for port in container.get("ports") or []:
            if port["containerPort"] not in gang:
                gang[port["containerPort"]] = free_port()
    ip = pod_ip(namespace, hostname, subdomain, metadata.get("name", ""))
    return Network(namespace=namespace, ip=ip, subdomain=subdomain, ports=gang)


@dataclass(frozen=True)
class ProcessPlan:
    """What to run for one container, and where its traces go."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    termination_message: Path  # host file of the container's terminationMessagePath
    termination_policy: str  # File or FallbackToLogsOnError
    mounts: dict[str, Path]  # container mountPath -> host folder or file


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, unknown ones stay as written,
    `$$` is a literal `$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(substitute, text)


def field_ref(pod: Mapping[str, Any], path: str, node_name: str, host_ip: str, ip: str) -> str:
    """The value of a downward-API fieldRef (the fields Kubernetes supports for env)."""
    metadata = pod.get("metadata", {})
    keyed = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if keyed:
        return str((metadata.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": node_name,
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": ip,
        "status.podIPs": ip,
    }
    if path not in simple:
        raise ContainerConfigError(f"unsupported fieldRef {path!r}")
    return str(simple[path])


def _quantity(value: Any, divisor: str | None) -> str:
    """resourceFieldRef: the limit as an integer of `divisor` units, rounded up (CPU in cores by
    default, memory in bytes)."""
    units = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    units |= {"Ti": 2**40}

    def number(text: Any) -> float:
        match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
        if not match or match.group(2) not in units:
            raise ContainerConfigError(f"unsupported quantity {text!r}")
        return float(match.group(1)) * units[match.group(2)]

    return str(math.ceil(number(value) / number(divisor or "1")))


def _env_source(
    pod: Mapping[str, Any], container: Mapping[str, Any], source: Mapping[str, Any], ctx: _Context
) -> str | None:
    if "fieldRef" in source:
        return field_ref(pod, source["fieldRef"]["fieldPath"], ctx.node_name, ctx.host_ip, ctx.network.ip)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        kind, _, resource = ref["resource"].partition(".")
        value = (container.get("resources", {}).get(kind) or {}).get(resource)
        if value is None:
            value = os.cpu_count() if resource == "cpu" else ctx.node_memory
        return _quantity(value, ref.get("divisor"))
    for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
        if key in source:
            ref = source[key]
            data = ctx.lookup(kind, ctx.namespace, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise ContainerConfigError(f"{kind} {ref['name']!r} key {ref['key']!r} not found")
            return data[ref["key"]]
    raise ContainerConfigError(f"unsupported env source {sorted(source)}")


@dataclass(frozen=True)
class _Context:
    namespace: str
    node_name: str
    host_ip: str
    network: Network
    lookup: Lookup
    node_memory: int


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], ctx: _Context) -> dict[str, str]:
    """The variables the container declares, in Kubernetes' order: envFrom first, then env entries,
    each able to refer to earlier ones with $(VAR)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        kind = "ConfigMap" if "configMapRef" in source else "Secret"
        data = ctx.lookup(kind, ctx.namespace, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f"{kind} {ref.get('name')!r} not found")
        env.update({source.get("prefix", "") + key: value for key, value in data.items()})
    for entry in container.get("env") or []:
        if "valueFrom" in entry:
            value = _env_source(pod, container, entry["valueFrom"], ctx)
            if value is None:
                continue
        else:
            value = expand(str(entry.get("value", "")), env)
        env[entry["name"]] = value
    return env


def _write_files(folder: Path, files: Mapping[str, str]) -> None:
    for relative, content in files.items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def _projected_keys(data: Mapping[str, str], items: list[Mapping[str, Any]] | None) -> dict[str, str]:
    if not items:
        return dict(data)
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


def volume_folder(
    pod: Mapping[str, Any], volume: Mapping[str, Any], pod_dir: Path, claims_dir: Path, ctx: _Context
) -> Path:
    """Create (or find) the host folder behind one pod volume."""
    name = volume["name"]
    if "persistentVolumeClaim" in volume:
        folder = claims_dir / ctx.namespace / volume["persistentVolumeClaim"]["claimName"]
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    folder = pod_dir / "volumes" / name
    folder.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        return folder
    for key, kind in (("configMap", "ConfigMap"), ("secret", "Secret")):
        if key in volume:
            source = volume[key]
            ref = source.get("name") or source.get("secretName", "")
            data = ctx.lookup(kind, ctx.namespace, ref)
            if data is None:
                if source.get("optional"):
                    return folder
                raise VolumeNotReady(f"{kind} {ref!r} for volume {name!r} not found")
            _write_files(folder, _projected_keys(data, source.get("items")))
            return folder
    if "downwardAPI" in volume:
        files = {
            item["path"]: field_ref(pod, item["fieldRef"]["fieldPath"], ctx.node_name, ctx.host_ip, ctx.network.ip)
            for item in volume["downwardAPI"].get("items", [])
        }
        _write_files(folder, files)
        return folder
    raise ContainerConfigError(f"volume {name!r}: unsupported source {sorted(set(volume) - {'name'})}")


class PathMap:
    """Rewrites container paths into the pod's rootfs folder (see the module docstring)."""

    def __init__(self, rootfs: Path, container_paths: list[str]) -> None:
        self.rootfs = rootfs
        self.paths = [posixpath.normpath(p) for p in container_paths]

    def covers(self, path: str) -> bool:
        path = posixpath.normpath(path)
        return any(path == p or path.startswith(p + "/") or p.startswith(path + "/") for p in self.paths)

    def host(self, path: str) -> str:
        return str(self.rootfs) + posixpath.normpath(path) if self.covers(path) else path


def rewrite(value: str, paths: PathMap, network: Network) -> str:
    """One env value or argument as the process must see it: container paths into rootfs, cluster DNS
    names to pod addresses, declared ports to host ports. `--flag=VALUE` rewrites VALUE."""
    if value.startswith("-") and "=" in value:
        flag, _, body = value.partition("=")
        return f"{flag}={rewrite(body, paths, network)}"
    if value.startswith("/"):
        return paths.host(value)
    host, colon, port = value.rpartition(":")
    if colon and port.isdigit() and host and "/" not in host:
        address = network.resolve(host)
        return f"{address or host}:{network.port(port)}"
    if value.isdigit():
        return network.port(value)
    return network.resolve(value) or value


def plan_container(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    pod_dir: Path,
    claims_dir: Path,
    network: Network,
    lookup: Lookup,
    base_env: Mapping[str, str],
    node_name: str,
    host_ip: str = "127.0.0.1",
    node_memory: int = 8 * 2**30,
) -> ProcessPlan:
    """Lay out the pod's folders and return how to start `container`. Raises ContainerConfigError or
    VolumeNotReady as a kubelet would report them."""
    namespace = pod["metadata"].get("namespace") or "default"
    ctx = _Context(namespace, node_name, host_ip, network, lookup, node_memory)
    command = list(container.get("command") or []) + list(container.get("args") or [])
    if not command:
        raise ContainerConfigError("the test kubelet has no image entrypoints: set the container's command")
    rootfs = pod_dir / "rootfs"
    volumes = {volume["name"]: volume for volume in pod.get("spec", {}).get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise ContainerConfigError(f"volumeMount {mount['name']!r} names no volume")
        source = volume_folder(pod, volumes[mount["name"]], pod_dir, claims_dir, ctx)
        if mount.get("subPath"):
            source = source / mount["subPath"]
            source.mkdir(parents=True, exist_ok=True)
        mounts[posixpath.normpath(mount["mountPath"])] = source
    termination_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    _link_mounts(rootfs, mounts)
    termination_file = Path(str(rootfs) + posixpath.normpath(termination_path))
    termination_file.parent.mkdir(parents=True, exist_ok=True)
    termination_file.write_text("")
    paths = PathMap(rootfs, [*mounts, termination_path])
    declared = {name: rewrite(value, paths, network) for name, value in container_env(pod, container, ctx).items()}
    hostname = pod.get("spec", {}).get("hostname") or pod["metadata"]["name"]
    env = image_environment(container.get("image", ""), {**base_env, "HOSTNAME": hostname, **declared})
    argv = [rewrite(expand(part, env), paths, network) for part in command]
    cwd = Path(paths.host(container["workingDir"])) if container.get("workingDir") else rootfs
    cwd.mkdir(parents=True, exist_ok=True)
    return ProcessPlan(
        argv=argv,
        env=env,
        cwd=cwd,
        termination_message=termination_file,
        termination_policy=container.get("terminationMessagePolicy") or "File",
        mounts=mounts,
    )


def _link_mounts(rootfs: Path, mounts: Mapping[str, Path]) -> None:
    for mount_path, source in sorted(mounts.items()):
        link = Path(str(rootfs) + mount_path)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            continue
        link.symlink_to(source, target_is_directory=source.is_dir())


def termination_message(plan: ProcessPlan, exit_code: int, log_file: Path) -> str:
    """What Kubernetes reports as the terminated container's message: the termination-message file,
    or (FallbackToLogsOnError, failed, empty file) the end of the log."""
    try:
        text = plan.termination_message.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        text = ""
    if text or plan.termination_policy != "FallbackToLogsOnError" or exit_code == 0:
        return text
    try:
        lines = log_file.read_bytes().decode(errors="replace").splitlines()[-FALLBACK_LOG_LINES:]
    except OSError:
        return ""
    return "\n".join(lines).encode()[-FALLBACK_LOG_BYTES:].decode(errors="replace")


def describe(plan: ProcessPlan) -> str:
    """A readable one-object dump of a plan, for logs."""
    return json.dumps({"argv": plan.argv, "cwd": str(plan.cwd)}, indent=None)
