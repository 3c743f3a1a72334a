"""The objects of a job's gang, built by pure functions from the job alone.

Nothing a user writes reaches a pod except through a field the API offers: there is no raw pod
template. So every trainer pod meets the "restricted" Pod Security Standard (non-root, no privilege
escalation, every capability dropped, RuntimeDefault seccomp) and carries no service-account token.

Names (all DNS-1035 labels, see kubetune.api.job.MAX_NAME_LENGTH):
- Service `<job>` (headless; it gives every worker the DNS name `<job>-w<index>.<job>.<ns>.svc`);
- ConfigMap `<job>-config` with `job.yaml`, the trainer configuration, and the spec as launched;
- Pod `<job>-a<attempt>-w<index>` with hostname `<job>-w<index>`, so the rendezvous address of worker 0
  is the same for every attempt.

Paths: each PersistentVolumeClaim named by a `pvc://claim/path` is mounted once at `/mnt/pvc/<claim>`
(the trainer's default `KUBETUNE_PVC_ROOT`), so `pvc://claim/path` is `/mnt/pvc/claim/path` in the pod.
The model and dataset paths are rewritten that way in `job.yaml`; `spec.storage` keeps its `pvc://` form
(the API requires it) and the resolved folders are passed as `--checkpoint-dir` / `--output-dir`.
Without `storage.checkpoints`, checkpoints go to an emptyDir and do not survive a restart.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.api.invocation import PVC_ROOT_ENV, RANK0_TOKEN_ENV, TrainerInvocation
from kubetune.api.job import FineTuneJob
from kubetune.api.operations import ResourcesSpec
from kubetune.operator import network_policy
from kubetune.operator.network_policy import GangNetwork
from kubetune.policies.storage import claims_of
from kubetune.policies.suspension import QUEUE_LABEL
from kubetune.policies.threads import ENV as THREADS_ENV
from kubetune.policies.threads import threads_per_process

JOB_LABEL = "kubetune.io/job-name"
INDEX_LABEL = "kubetune.io/worker-index"
ATTEMPT_LABEL = "kubetune.io/attempt"
#: The job's uid on its pods: what tells its pods from a deleted namesake's still terminating (the
#: attempt's NetworkPolicy selects by it).
JOB_UID_LABEL = "kubetune.io/job-uid"
CONTAINER = "trainer"
CONFIG_KEY = "job.yaml"
#: ConfigMap key that keeps the spec the job launched with (wire form, JSON; see kubetune.policies.spec_changes).
LAUNCHED_SPEC_KEY = "launched-spec.json"
CONFIG_DIR = "/etc/kubetune"
PVC_ROOT = "/mnt/pvc"
SCRATCH_DIR = "/mnt/scratch"
RENDEZVOUS_PORT = 29500
METRICS_PORT = 9400
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
#: Non-root user and group the trainer runs as (the trainer image's `kubetune` user).
TRAINER_UID = 1000
#: Seconds of a pod's grace period (`spec.checkpointing.gracePeriodSeconds`) that torchrun does not give its
#: ranks: after SIGTERM it waits this much less than the kubelet, so that a rank that overruns is ended by
#: torchrun, which then exits with its own report, rather than everything by the kubelet's SIGKILL.
TORCHRUN_EXIT_MARGIN_SECONDS = 5


#: The cpu and memory requests of a worker pod whose job (or, without `spec.resources`, the operator's
#: `--trainer-resources`) sets neither the request nor a limit (from a limit, Kubernetes takes the request
#: itself). A namespace whose ResourceQuota covers `requests.cpu` or `requests.memory` refuses a pod that
#: does not state them, so without these such a job would never get its pods. They are there to be
#: admitted, not to size the trainer: small enough to fit any node a gang could run on (a larger
#: reservation leaves it unschedulable on small nodes; no limit is set, so the trainer may use more),
#: yet what a worker needs just to start: one core for its training loop, and 2 GiB for a Python
#: process with torch, transformers and DeepSpeed imported (about 0.85 GiB resident on CPU, before any
#: model) plus torchrun. Jobs that know their needs set `spec.resources`; clusters, the chart's
#: `trainer.resources`.
DEFAULT_REQUESTS = {"cpu": "1", "memory": "2Gi"}


@dataclass(frozen=True)
class BuildSettings:
    """Operator-wide choices the builders need beside the job."""

    trainer_image: str
    """Image for jobs that set no `spec.image`."""
    shm_size: str = "8Gi"
    """Size limit of the memory-backed /dev/shm (NCCL and DataLoader workers need more than 64 MiB)."""
    image_pull_policy: str = "IfNotPresent"
    default_resources: ResourcesSpec | None = None
    """Requests and limits of worker pods whose job sets no `spec.resources` (the chart's
    `trainer.resources`)."""
    result_handover_seconds: float = 120.0
    """Seconds rank 0 keeps serving its whole result at GET /result after the run, for the operator to take
    (`--result-handover-seconds`, see kubetune.policies.handover). The operator normally takes it at its
    next reconcile (within `reconcile_interval`); the bound covers an operator restart or rollout, and keeps
    a job from hanging when the operator is down or cut off: then rank 0's pod (its accelerators) is held
    this long in vain, and the status gets what fits the termination message."""
    gang_network: GangNetwork | None = None
    """Who may reach each attempt's pods (kubetune.operator.network_policy); None: the operator makes no
    NetworkPolicy (`--gang-network-policy` unset)."""


def service_name(job: FineTuneJob) -> str:
    return job.name


def configmap_name(job_name: str) -> str:
    """By the job's name alone: the operator reads the ConfigMap before the job is known to be valid."""
    return f"{job_name}-config"


def pod_name(job: FineTuneJob, attempt: int, index: int) -> str:
    return f"{job.name}-a{attempt}-w{index}"


def worker_hostname(job: FineTuneJob, index: int) -> str:
    return f"{job.name}-w{index}"


def master_address(job: FineTuneJob) -> str:
    """Worker 0's DNS name through the headless Service."""
    return f"{worker_hostname(job, 0)}.{service_name(job)}.{job.namespace}.svc"


def job_labels(job: FineTuneJob) -> dict[str, str]:
    return {JOB_LABEL: job.name, "app.kubernetes.io/name": "kubetune", "app.kubernetes.io/component": "trainer"}


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    """Makes the job own a child: deleting the job deletes it (Kubernetes' garbage collector)."""
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "name": job.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: FineTuneJob, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": {**job_labels(job), **(labels or {})},
        "ownerReferences": [owner_reference(job)],
    }


def pvc_path(value: str) -> str:
    """`pvc://claim/path` as its path inside a trainer pod; other values unchanged."""
    if not value.startswith("pvc://"):
        return value
    claim, _, rest = value.removeprefix("pvc://").partition("/")
    return posixpath.join(PVC_ROOT, claim, rest) if rest else posixpath.join(PVC_ROOT, claim)


def claims(job: FineTuneJob) -> dict[str, bool]:
    """Every PVC the job names -> whether it is written to (checkpoints, output)."""
    return claims_of(job.spec)


def storage_dirs(job: FineTuneJob) -> tuple[str, str]:
    """(checkpoint dir, output dir) inside the pod."""
    storage = job.spec.storage
    checkpoints = pvc_path(storage.checkpoints) if storage.checkpoints else f"{SCRATCH_DIR}/checkpoints"
    output = pvc_path(storage.output) if storage.output else posixpath.join(checkpoints, "output")
    return checkpoints, output


def render_trainer_config(job: FineTuneJob) -> str:
    """The job manifest the trainer reads (`kubetune train --config`), without status or server fields,
    model and dataset `pvc://` paths rewritten to mount paths."""
    manifest = job.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"status"})
    manifest["metadata"] = {"name": job.name, "namespace": job.namespace}
    spec = manifest["spec"]
    spec["model"]["source"] = pvc_path(spec["model"]["source"])
    for key in ("train", "validation", "test"):
        if key in spec["dataset"]:
            spec["dataset"][key] = pvc_path(spec["dataset"][key])
    return yaml.safe_dump(manifest, sort_keys=False)


def build_configmap(job: FineTuneJob, launched_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer configuration and `launched_spec`, the job's spec as its manifest wrote it (wire form,
    no defaults filled in: later specs are compared with it as written)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, configmap_name(job.name)),
        "data": {
            CONFIG_KEY: render_trainer_config(job),
            LAUNCHED_SPEC_KEY: json.dumps(dict(launched_spec), sort_keys=True),
        },
    }


def _uid_label(job: FineTuneJob) -> dict[str, str]:
    return {JOB_UID_LABEL: job.metadata.uid} if job.metadata.uid else {}


def build_network_policy(job: FineTuneJob, attempt: int, settings: BuildSettings) -> dict[str, Any] | None:
    """The NetworkPolicy of `attempt`'s gang (kubetune.operator.network_policy); None when none is made."""
    if settings.gang_network is None:
        return None
    gang = {**job_labels(job), ATTEMPT_LABEL: str(attempt), **_uid_label(job)}
    return network_policy.build_network_policy(
        job, attempt, settings.gang_network, gang, METRICS_PORT, owner_reference(job)
    )


def build_service(job: FineTuneJob) -> dict[str, Any]:
    """Headless, publishing not-ready addresses: workers must resolve worker 0 before any is ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job.name},
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT},
            ],
        },
    }


def _command(job: FineTuneJob, settings: BuildSettings) -> list[str]:
    """The pod's supervisor (kubetune.worker, the container's PID 1) running torchrun, which runs the ranks.
    Without `--hold-seconds` the container ends as torchrun does: the recreate path."""
    distributed = job.spec.distributed
    return [
        "python",
        "-m",
        "kubetune.worker",
        f"--grace-seconds={job.spec.checkpointing.grace_period_seconds}",
        f"--termination-message-path={TERMINATION_MESSAGE_PATH}",
        "--",
        "torchrun",
        f"--nnodes={distributed.workers}",
        f"--nproc_per_node={distributed.processes_per_worker}",
        "--node_rank=$(KUBETUNE_WORKER_INDEX)",
        f"--master_addr={master_address(job)}",
        f"--master_port={RENDEZVOUS_PORT}",
        "-m",
        "kubetune.cli",
        *trainer_invocation(job, attempt=None, result_handover_seconds=settings.result_handover_seconds).argv(),
    ]


def trainer_invocation(
    job: FineTuneJob, attempt: int | None, result_handover_seconds: float = 0.0
) -> TrainerInvocation:
    """What each rank of the job's pods runs: the shared contract with the local runner."""
    checkpoints, output = storage_dirs(job)
    return TrainerInvocation(
        config=f"{CONFIG_DIR}/{CONFIG_KEY}",
        workdir=f"{SCRATCH_DIR}/work",
        checkpoint_dir=checkpoints,
        output_dir=output,
        metrics_port=METRICS_PORT,
        termination_message_path=TERMINATION_MESSAGE_PATH,
        result_handover_seconds=result_handover_seconds,
        attempt=attempt,
        job_uid=job.metadata.uid or None,
        accelerator=job.spec.distributed.cluster_accelerator,
        shutdown_timeout_seconds=job.spec.checkpointing.grace_period_seconds - TORCHRUN_EXIT_MARGIN_SECONDS,
    )


def _threads(job: FineTuneJob, settings: BuildSettings, resources: dict[str, Any]) -> int | None:
    """OMP_NUM_THREADS from the pod's CPU (kubetune.policies.threads): a GPU worker's only from a CPU someone
    stated, not from the default request of one core."""
    if job.spec.distributed.cluster_accelerator == "nvidia-gpu":
        stated = job.spec.resources or settings.default_resources
        resources = {"limits": stated.limits, "requests": stated.requests} if stated else {}
    processes = job.spec.distributed.processes_per_worker
    return threads_per_process(processes, resources.get("limits"), resources.get("requests"), None)


def _env(job: FineTuneJob, attempt: int, index: int, rank0_token: str, threads: int | None) -> list[dict[str, Any]]:
    rank_env = trainer_invocation(job, attempt).env() | {
        "KUBETUNE_WORKER_INDEX": str(index),
        PVC_ROOT_ENV: PVC_ROOT,
        "HOME": SCRATCH_DIR,
        "HF_HOME": f"{SCRATCH_DIR}/huggingface",
    }
    if threads is not None:
        rank_env[THREADS_ENV] = str(threads)  # the pod's CPU, not the node's cores
    if rank0_token:
        rank_env[RANK0_TOKEN_ENV] = rank0_token
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in rank_env.items()]
    token = job.spec.model.token_secret_ref
    if token is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    return env


def _resources(job: FineTuneJob, settings: BuildSettings) -> dict[str, Any]:
    spec = job.spec
    chosen = spec.resources or settings.default_resources
    # Quantities as strings, their canonical wire form (the client library insists on it).
    requests = {k: str(v) for k, v in ((chosen.requests or {}) if chosen else {}).items()}
    limits = {k: str(v) for k, v in ((chosen.limits or {}) if chosen else {}).items()}
    for name, quantity in DEFAULT_REQUESTS.items():
        if name not in requests and name not in limits:  # with a limit, Kubernetes copies it as the request
            requests[name] = quantity
    if spec.distributed.cluster_accelerator == "nvidia-gpu":
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(spec.distributed.processes_per_worker)
    return {k: v for k, v in {"requests": requests, "limits": limits}.items() if v}


def _volumes(job: FineTuneJob, settings: BuildSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": configmap_name(job.name)}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    for number, (claim, writes) in enumerate(sorted(claims(job).items())):
        volume = f"pvc-{number}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": not writes}})
        mounts.append({"name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": not writes})
    return volumes, mounts


def _scheduling(job: FineTuneJob) -> dict[str, Any]:
    scheduling = job.spec.scheduling
    if scheduling is None:
        return {}
    fields: dict[str, Any] = {
        "nodeSelector": scheduling.node_selector,
        "tolerations": [t.to_wire() for t in scheduling.tolerations] if scheduling.tolerations else None,
        "priorityClassName": scheduling.priority_class_name,
    }
    return {k: v for k, v in fields.items() if v}


def build_worker_pod(
    job: FineTuneJob, attempt: int, index: int, settings: BuildSettings, rank0_token: str = ""
) -> dict[str, Any]:
    """Worker `index` of gang attempt `attempt`; `rank0_token`: the attempt's token for rank 0's endpoints
    (kubetune.api.invocation.RANK0_TOKEN_ENV; empty: none, as in a Workload's pod template)."""
    volumes, mounts = _volumes(job, settings)
    resources = _resources(job, settings)
    labels = {INDEX_LABEL: str(index), ATTEMPT_LABEL: str(attempt), **_uid_label(job)}
    queue = job.spec.scheduling.queue_name if job.spec.scheduling else None
    if queue:
        labels[QUEUE_LABEL] = queue
    container = {
        "name": CONTAINER,
        "image": job.spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": _command(job, settings),
        "env": _env(job, attempt, index, rank0_token, _threads(job, settings, resources)),
        "ports": [
            {"name": "rendezvous", "containerPort": RENDEZVOUS_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(job, pod_name(job, attempt, index), labels),
        "spec": {
            "restartPolicy": "Never",
            "hostname": worker_hostname(job, index),
            "subdomain": service_name(job),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            # SIGTERM (preemption, eviction, drain, suspension) -> the ranks checkpoint; SIGKILL after this.
            "terminationGracePeriodSeconds": job.spec.checkpointing.grace_period_seconds,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": TRAINER_UID,
                "runAsGroup": TRAINER_UID,
                "fsGroup": TRAINER_UID,
                # Re-own a claim's files only when its root is not ours yet: a recursive chown of a claim
                # full of checkpoints on every start would delay each attempt by minutes.
                "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
            **_scheduling(job),
        },
    }
