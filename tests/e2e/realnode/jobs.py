"""The real node's training jobs, shared by its scenarios (test_training.py, test_network_policy.py): the
tiny model and dataset on a `data` claim, each job's checkpoints on a `ckpt` claim the trainer's user owns,
and a small facade over one FineTuneJob and its pods."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.jobs import SCENARIO_SPEC
from tests.e2e.realnode.cluster import JOBS
from tests.support import tiny
from tests.support.builders import JobBuilder
from tests.support.kubeapi import KubeApi
from tests.support.realnode import RealNode
from tests.support.waiting import eventually

TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"
#: Requests that let two workers and the operator fit the node's two cores.
WORKER_RESOURCES = {"requests": {"cpu": "400m", "memory": "1Gi"}}
#: A run that only stops when asked: no periodic checkpoint, so any checkpoint is the SIGTERM one.
UNTIL_STOPPED = {"hyperparameters": {"maxSteps": 100000, "epochs": 1000}, "checkpointing": {"everySteps": 100000}}


@dataclass(frozen=True)
class Inputs:
    """The tiny model and the dataset, in one folder every scenario's `data` claim is bound to."""

    folder: Path
    model: str
    train: str
    validation: str


def make_inputs(real_node: RealNode) -> Inputs:
    """The tiny model and dataset in the node's `inputs` folder (every scenario's `data` claim)."""
    folder = real_node.folder / "volumes" / "inputs"
    tiny.build_tiny_model(folder / "model")
    train, validation = tiny.write_dataset(folder, "prompt-completion", train=96, validation=16)
    assert validation is not None
    # a second copy whose weights only their owner (root) may read, as a claim written by another user
    shutil.copytree(folder / "model", folder / "private-model")
    # the process kubelet ran its trainers as root; here they run as uid 1000 and must be able to read
    # (safetensors writes its files readable by their owner only)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (folder / "private-model" / "model.safetensors").chmod(0o600)
    return Inputs(folder, "pvc://data/model", f"pvc://data/{train.name}", f"pvc://data/{validation.name}")


@dataclass
class RealJob:
    """One FineTuneJob on the real node, and the folder of its checkpoint claim."""

    admin: KubeApi
    node: RealNode
    namespace: str
    name: str
    checkpoints: Path

    def status(self) -> dict[str, Any]:
        return (self.admin.get(JOBS, self.namespace, self.name) or {}).get("status") or {}

    def wait_phase(self, *phases: str, timeout: float = 300) -> dict[str, Any]:
        try:
            eventually(lambda: self.status().get("phase") in phases, timeout, message=f"{self.name} to reach {phases}")
        except AssertionError as error:
            raise AssertionError(f"{error}\nstatus: {self.status()}\n{self.logs()}") from None
        return self.status()

    def pods(self) -> list[dict[str, Any]]:
        return self.admin.list("v1/pods", self.namespace)

    def running(self, attempt: int) -> list[dict[str, Any]] | None:
        pods = [p for p in self.pods() if p["metadata"]["name"].startswith(f"{self.name}-a{attempt}-")]
        statuses = [(p.get("status") or {}).get("containerStatuses") or [{}] for p in pods]
        return pods if len(pods) == 2 and all("running" in s[0].get("state", {}) for s in statuses) else None

    def log(self, pod: str) -> str:
        return self.node.control_plane.kubectl("logs", "-n", self.namespace, pod).stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {p['metadata']['name']} ---\n{self.log(p['metadata']['name'])[-3000:]}" for p in self.pods()
        )

    def steps_saved(self) -> list[str]:
        return sorted(p.name for p in (self.checkpoints / self.name).glob("step-*") if p.is_dir())


def a_real_job(name: str, inputs: Inputs) -> JobBuilder:
    """The process kubelet's scenario job (tests/e2e/jobs.py), its inputs and checkpoints on claims."""
    job = tiny.a_tiny_job(inputs.model, inputs.train, inputs.validation, name=name).spec(SCENARIO_SPEC)
    return job.storage(f"pvc://ckpt/{name}").resources(WORKER_RESOURCES)


def rank_processes(node: RealNode, namespace: str, pod: str) -> list[int]:
    """Host PIDs of the training ranks in a pod (torchrun's children: `python -m kubetune.cli train`)."""
    first = node.container_pid(namespace, pod)
    pid_namespace = os.readlink(f"/proc/{first}/ns/pid")
    ranks = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.readlink(proc / "ns" / "pid") != pid_namespace:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kubetune.cli" in argv and not any(arg.endswith(b"torchrun") for arg in argv):
            ranks.append(int(proc.name))
    return ranks
