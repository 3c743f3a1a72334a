"""The pure builders: a job in, Kubernetes objects out, valid against Kubernetes' own schemas and the
"restricted" Pod Security Standard."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api.job import FineTuneJob
from kubetune.operator.builders import (
    DEFAULT_REQUESTS,
    BuildSettings,
    build_configmap,
    build_service,
    build_worker_pod,
    pvc_path,
    storage_dirs,
)
from tests.support.builders import a_cpu_gang

pytestmark = pytest.mark.timeout(30)

SETTINGS = BuildSettings(trainer_image="kubetune/trainer:1")
K8S_VERSION = "1.30.0"


#: The job these tests build objects for (a_cpu_gang: two CPU workers, checkpoints on a claim).
LLAMA = a_cpu_gang("llama").in_namespace("ml").metadata(uid="1234")


def make_job(**spec: Any) -> FineTuneJob:
    """LLAMA with `spec` merged in (wire names)."""
    return LLAMA.spec(spec).to_job()


def container(pod: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = pod["spec"]["containers"][0]
    return result


def test_every_object_is_valid_against_the_kubernetes_schemas() -> None:
    job = make_job(model={"source": "hf://org/m", "tokenSecretRef": {"name": "hf", "key": "token"}})
    configmap = build_configmap(job, job.spec.to_wire())
    for obj in (build_service(job), configmap, build_worker_pod(job, 3, 1, SETTINGS)):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_worker_pod_identity_labels_owner_and_rendezvous() -> None:
    pod = build_worker_pod(make_job(), attempt=3, index=1, settings=SETTINGS)
    meta = pod["metadata"]
    assert meta["name"] == "llama-a3-w1" and meta["namespace"] == "ml"
    expected = {"kubetune.io/job-name": "llama", "kubetune.io/worker-index": "1", "kubetune.io/attempt": "3"}
    assert expected.items() <= meta["labels"].items()
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "llama",
            "uid": "1234",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"], pod["spec"]["restartPolicy"]) == (
        "llama-w1",
        "llama",
        "Never",
    )
    command = container(pod)["command"]
    assert command[:6] == [
        "python",
        "-m",
        "kubetune.worker",
        "--grace-seconds=30",
        "--termination-message-path=/dev/termination-log",
        "--",
    ]
    command = command[6:]
    assert command[:6] == [
        "torchrun",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--node_rank=$(KUBETUNE_WORKER_INDEX)",
        "--master_addr=llama-w0.llama.ml.svc",
        "--master_port=29500",
    ]
    assert command[6:11] == ["-m", "kubetune.cli", "train", "--config", "/etc/kubetune/job.yaml"]
    assert command[-2:] == ["--termination-message-path", "/dev/termination-log"]
    env = {e["name"]: e for e in container(pod)["env"]}
    assert env["KUBETUNE_ATTEMPT"]["value"] == "3" and env["KUBETUNE_WORKER_INDEX"]["value"] == "1"
    assert env["KUBETUNE_JOB_UID"]["value"] == "1234"  # with the attempt: the fencing epoch
    assert {"name": "metrics", "containerPort": 9400} in container(pod)["ports"]


def test_worker_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = build_worker_pod(make_job(), 1, 0, SETTINGS)
    spec, security = pod["spec"], container(pod)["securityContext"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(key in spec for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in volume for volume in spec["volumes"])


@pytest.mark.parametrize(
    ("accelerator", "processes", "gpus"),
    [("nvidia-gpu", 4, "4"), ("cpu", 4, None), (None, 2, "2")],  # unset: nvidia-gpu in a cluster
)
def test_gpus_are_requested_per_process(accelerator: str | None, processes: int, gpus: str | None) -> None:
    job = make_job(
        distributed={"accelerator": accelerator, "processesPerWorker": processes},
        resources={"limits": {"memory": "16Gi"}},
    )
    resources = container(build_worker_pod(job, 1, 0, SETTINGS))["resources"]
    assert resources["limits"].get("nvidia.com/gpu") == gpus and resources["limits"]["memory"] == "16Gi"
    env = {e["name"] for e in container(build_worker_pod(job, 1, 0, SETTINGS))["env"]}
    assert ("DS_ACCELERATOR" in env) == (accelerator == "cpu")


@pytest.mark.parametrize(
    ("resources", "processes", "threads"),
    [
        ({"requests": {"cpu": "400m"}}, 1, "1"),
        ({"requests": {"cpu": "2"}, "limits": {"cpu": "6"}}, 2, "3"),
        (None, 2, "1"),  # the default request, one core, shared by two ranks
        ({"requests": {"cpu": "8"}}, 2, "4"),
    ],
)
@pytest.mark.parametrize("accelerator", ["cpu", "nvidia-gpu"])
def test_each_rank_computes_with_the_pods_cpu_not_the_nodes_cores(
    resources: dict[str, Any] | None, processes: int, threads: str, accelerator: str
) -> None:
    job = make_job(distributed={"processesPerWorker": processes, "accelerator": accelerator}, resources=resources)
    env = {e["name"]: e.get("value") for e in container(build_worker_pod(job, 1, 0, SETTINGS))["env"]}
    # A GPU worker's CPU work (CPU Adam, tokenization) keeps torch's default unless a CPU was stated.
    expected = None if accelerator == "nvidia-gpu" and resources is None else threads
    assert env.get("OMP_NUM_THREADS") == expected


def test_volumes_shm_config_and_one_mount_per_claim() -> None:
    job = make_job(
        model={"source": "pvc://models/llama"},
        dataset={"train": "pvc://data/train.jsonl", "validation": "pvc://data/val.jsonl"},
        storage={"checkpoints": "pvc://runs/llama/ckpt", "output": "pvc://runs/llama/out"},
    )
    pod = build_worker_pod(job, 1, 0, SETTINGS)
    mounts = {m["mountPath"]: m for m in container(pod)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/etc/kubetune"]["name"]]["configMap"]["name"] == "llama-config"
    assert mounts["/mnt/pvc/models"]["readOnly"] and mounts["/mnt/pvc/data"]["readOnly"]
    assert not mounts["/mnt/pvc/runs"]["readOnly"]
    claims = sorted(v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v)
    assert claims == ["data", "models", "runs"]
    command = container(pod)["command"]
    assert command[command.index("--checkpoint-dir") + 1] == "/mnt/pvc/runs/llama/ckpt"
    assert command[command.index("--output-dir") + 1] == "/mnt/pvc/runs/llama/out"


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("pvc://data/a/b.jsonl", "/mnt/pvc/data/a/b.jsonl"),
        ("pvc://data", "/mnt/pvc/data"),
        ("hf://org/m", "hf://org/m"),
        ("rel/x", "rel/x"),
    ],
)
def test_pvc_path(value: str, path: str) -> None:
    assert pvc_path(value) == path


@pytest.mark.parametrize(
    ("storage", "dirs"),
    [
        ({"checkpoints": "pvc://c/run"}, ("/mnt/pvc/c/run", "/mnt/pvc/c/run/output")),
        ({"checkpoints": "pvc://c/run", "output": "pvc://o/x"}, ("/mnt/pvc/c/run", "/mnt/pvc/o/x")),
    ],
)
def test_storage_dirs(storage: dict[str, str], dirs: tuple[str, str]) -> None:
    assert storage_dirs(make_job(storage=storage)) == dirs


def test_storage_dirs_without_a_checkpoint_claim_use_scratch() -> None:
    assert storage_dirs(a_cpu_gang("llama").spec(storage=None).to_job()) == (
        "/mnt/scratch/checkpoints",
        "/mnt/scratch/checkpoints/output",
    )


def test_configmap_holds_a_valid_manifest_with_mount_paths_and_the_spec_as_launched() -> None:
    job = make_job(model={"source": "pvc://models/llama"})
    written = {"model": {"source": "pvc://models/llama"}, "dataset": {"train": "pvc://data/train.jsonl"}}
    configmap = build_configmap(job, written)
    assert configmap["metadata"]["name"] == "llama-config"
    assert json.loads(configmap["data"]["launched-spec.json"]) == written  # as written: no defaults added
    rendered = yaml.safe_load(configmap["data"]["job.yaml"])
    again = FineTuneJob.model_validate(rendered)
    assert again.spec.model.source == "/mnt/pvc/models/llama"
    assert again.spec.dataset.train == "/mnt/pvc/data/train.jsonl"
    assert again.spec.storage.checkpoints == "pvc://ckpt/llama"  # the API keeps pvc:// here; flags carry the path
    assert "status" not in rendered and "uid" not in rendered["metadata"]


def test_scheduling_token_and_queue() -> None:
    job = make_job(
        model={"source": "hf://org/m", "tokenSecretRef": {"name": "hf", "key": "token"}},
        scheduling={
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "high",
            "queueName": "team-a",
        },
        image="my/trainer:2",
    )
    pod = build_worker_pod(job, 1, 0, SETTINGS)
    assert pod["spec"]["nodeSelector"] == {"pool": "a100"} and pod["spec"]["priorityClassName"] == "high"
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert container(pod)["image"] == "my/trainer:2"
    token = next(e for e in container(pod)["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}


def test_service_is_headless_and_publishes_not_ready_workers() -> None:
    service = build_service(make_job())
    assert service["metadata"]["name"] == "llama"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"kubetune.io/job-name": "llama"}


@pytest.mark.parametrize(
    ("own", "default", "expected"),
    [
        (None, None, {"requests": DEFAULT_REQUESTS}),
        (None, {"requests": {"cpu": 4, "memory": "16Gi"}}, {"requests": {"cpu": "4", "memory": "16Gi"}}),
        (  # the job's own win, as a whole
            {"limits": {"memory": "8Gi"}},
            {"requests": {"cpu": 4}},
            {"limits": {"memory": "8Gi"}, "requests": {"cpu": DEFAULT_REQUESTS["cpu"]}},
        ),
    ],
)
def test_default_trainer_resources_apply_to_jobs_without_their_own(
    own: dict[str, Any] | None, default: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    from kubetune.api.operations import ResourcesSpec

    settings = BuildSettings(
        trainer_image="kubetune/trainer:1", default_resources=ResourcesSpec.model_validate(default) if default else None
    )
    job = make_job(distributed={"accelerator": "cpu"}, **({"resources": own} if own else {}))
    assert container(build_worker_pod(job, 1, 0, settings)).get("resources", {}) == expected


#: (the job's spec.resources, its accelerator, the container's resources): cpu and memory are requested
#: even where nothing sets them, so that a ResourceQuota requiring requests admits the pods; never beside a
#: limit (Kubernetes copies the limit as the request, and a larger default would make the pod invalid).
DEFAULT_REQUEST_CASES: list[tuple[dict[str, Any] | None, str, dict[str, Any]]] = [
    (None, "cpu", {"requests": {"cpu": "1", "memory": "2Gi"}}),
    ({"requests": {"cpu": "8"}}, "cpu", {"requests": {"cpu": "8", "memory": "2Gi"}}),
    ({"requests": {"memory": "64Gi"}}, "cpu", {"requests": {"cpu": "1", "memory": "64Gi"}}),
    ({"requests": {"cpu": 500}}, "cpu", {"requests": {"cpu": "500", "memory": "2Gi"}}),
    ({"limits": {"memory": "512Mi"}}, "cpu", {"requests": {"cpu": "1"}, "limits": {"memory": "512Mi"}}),
    ({"limits": {"cpu": "2", "memory": "4Gi"}}, "cpu", {"limits": {"cpu": "2", "memory": "4Gi"}}),
    (
        {"requests": {"ephemeral-storage": "10Gi"}},
        "cpu",
        {"requests": {"ephemeral-storage": "10Gi", "cpu": "1", "memory": "2Gi"}},
    ),
    (
        None,
        "nvidia-gpu",
        {"requests": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
    ),
]


@pytest.mark.parametrize(("own", "accelerator", "expected"), DEFAULT_REQUEST_CASES)
def test_worker_pods_request_cpu_and_memory_where_nothing_else_does(
    own: dict[str, Any] | None, accelerator: str, expected: dict[str, Any]
) -> None:
    job = make_job(distributed={"accelerator": accelerator}, **({"resources": own} if own else {}))
    pod = build_worker_pod(job, 1, 0, SETTINGS)
    assert container(pod)["resources"] == expected
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_operator_refuses_bad_default_resources(capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    assert main(["operator", "--trainer-resources", '{"requests": {"cpu": "lots"}}']) == 2
    assert "--trainer-resources: requests.cpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("checkpointing", "grace", "torchrun"),
    [
        ({}, 30, "25"),  # Kubernetes' own default; torch's agent would wait 30 s, the kubelet too
        ({"gracePeriodSeconds": 600}, 600, "595"),  # a large model's SIGTERM checkpoint
        ({"gracePeriodSeconds": 10}, 10, "5"),
    ],
)
def test_the_grace_period_reaches_the_pod_and_torchrun(
    checkpointing: dict[str, int], grace: int, torchrun: str
) -> None:
    pod = build_worker_pod(make_job(checkpointing=checkpointing), attempt=1, index=0, settings=SETTINGS)
    assert pod["spec"]["terminationGracePeriodSeconds"] == grace
    env = {e["name"]: e.get("value") for e in container(pod)["env"]}
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == torchrun
    command = container(pod)["command"]
    assert command[command.index("--") + 1] == "torchrun"  # the launcher that reads it
    assert f"--grace-seconds={grace}" in command, "the supervisor waits as long for torchrun as the kubelet does"


def test_claims_are_re_owned_only_when_their_root_is_not_the_trainers() -> None:
    context = build_worker_pod(make_job(), attempt=1, index=0, settings=SETTINGS)["spec"]["securityContext"]
    assert context["fsGroup"] == 1000 and context["fsGroupChangePolicy"] == "OnRootMismatch"


def test_the_pods_command_is_one_the_supervisor_accepts() -> None:
    from kubetune.worker.__main__ import _arguments
    from kubetune.worker.supervisor import command_of

    command = container(build_worker_pod(make_job(), 3, 1, SETTINGS))["command"]
    assert command[:3] == ["python", "-m", "kubetune.worker"]
    args = _arguments(command[3:])
    assert (args.port, args.hold_seconds, args.grace_seconds) == (None, 0.0, 30.0), "no endpoint: the recreate path"
    assert str(args.termination_message_path) == "/dev/termination-log"
    assert command_of(command[3:])[0] == "torchrun"
