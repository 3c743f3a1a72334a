"""End-to-end jobs: a tiny model, learnable data and a FineTuneJob (`a_scenario`, a preset of the builder
in tests/support/builders.py), submitted to the real control plane, with the waits and reads the scenarios
share.

The model and datasets are plain absolute paths on this machine: for the process kubelet the machine is
the container image, so they stand for files baked into the image (the API allows "a path in the image").
Checkpoints and the export go to a PersistentVolumeClaim (`pvc://<claim>/<job>`), which the kubelet maps
to a folder that outlives pods, as a claim outlives them in a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support import tiny
from tests.support.apiserver import JOBS, PODS
from tests.support.builders import JobBuilder
from tests.support.waiting import eventually

CLAIM = "checkpoints"
#: Steps of every scenario run: long enough (about a second) that a test can act between the first
#: checkpoint and the end.
MAX_STEPS = 48
#: The trainer's log line when an attempt resumes: the checkpoint's step and the total.
RESUMED = re.compile(r"resumed from checkpoint \S+ \(step (\d+) of (\d+)\)")
#: The spec every scenario starts from: 2 workers x 1 process, ZeRO-2 on CPU, fp32, a checkpoint every
#: 8 steps, restarts without waiting.
SCENARIO_SPEC: dict[str, Any] = {
    "hyperparameters": {"maxSteps": MAX_STEPS, "microBatchSize": 4, "epochs": 5},  # 12 steps per epoch
    "distributed": {"workers": 2, "processesPerWorker": 1, "accelerator": "cpu", "zeroStage": 2, "precision": "fp32"},
    "checkpointing": {"everySteps": 8, "keep": 2},
    "retryPolicy": {"maxRestarts": 2, "backoffSeconds": 0},
}


@dataclass
class Job:
    """One submitted FineTuneJob and the cluster it runs in."""

    cluster: RealCluster
    kubelet: ScheduledKubelet
    namespace: str
    name: str

    def status(self) -> dict[str, Any]:
        return self.cluster.status(self.namespace, self.name)

    def phase(self) -> str | None:
        return self.status().get("phase")

    def pods(self, attempt: int | None = None) -> list[dict[str, Any]]:
        return self.cluster.pods(self.namespace, self.name, attempt)

    def events(self) -> list[dict[str, Any]]:
        return self.cluster.events(self.namespace, self.name)

    @property
    def storage(self) -> Path:
        """The job's folder on the checkpoint claim (checkpoints; the export is in `output/`)."""
        return self.kubelet.claim_dir(self.namespace, CLAIM) / self.name

    def condition(self, type_: str) -> dict[str, Any] | None:
        return condition_in(self.status(), type_) or None

    def wait_condition(self, type_: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        """Wait until the job's condition `type_` has `reason`; returns the condition."""

        def found() -> dict[str, Any]:
            condition = self.condition(type_)
            assert condition is not None and condition.get("reason") == reason, self.status()
            return condition

        found_condition: dict[str, Any] = eventually(found, timeout, message=f"{self.name}: {type_} {reason}")
        return found_condition

    def wait_phase(self, *phases: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the job's phase is one of `phases`; returns the status. On timeout the failure
        message carries the status and the tails of the pods' logs."""
        try:
            eventually(lambda: self.phase() in phases, timeout, message=f"{self.name} to reach {phases}")
        except AssertionError as error:
            raise AssertionError(f"{error}\nstatus: {self.status()}\n{self.logs()}") from None
        return self.status()

    def wait_running(self, attempt: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until both processes of `attempt` run; returns its pods."""

        def running() -> list[dict[str, Any]] | None:
            pods = self.pods(attempt)
            alive = self.kubelet.running()
            ok = len(pods) == 2 and all((self.namespace, p["metadata"]["name"]) in alive for p in pods)
            return pods if ok else None

        pods: list[dict[str, Any]] = eventually(running, timeout, message=f"attempt {attempt} of {self.name} to run")
        return pods

    def wait_checkpoint(self, step: int, timeout: float = 120) -> None:
        """Wait until a complete checkpoint of at least `step` is on the claim."""

        def latest() -> int:
            steps = [int(p.name.split("-")[-1]) for p in self.storage.glob("step-*") if p.is_dir()]
            complete = [s for s in steps if s >= step and (self.storage / f"step-{s:08d}").is_dir()]
            return max(complete, default=0)

        try:
            eventually(latest, timeout, interval=0.02, message=f"a checkpoint at step {step} of {self.name}")
        except AssertionError as error:
            raise AssertionError(f"{error}\nstatus: {self.status()}\n{self.logs()}") from None

    def wait_gone(self, timeout: float = 60) -> None:
        try:
            eventually(lambda: not self.pods(), timeout, message=f"every pod of {self.name} to be gone")
        except AssertionError as error:
            left = [(p["metadata"]["name"], p.get("status", {}).get("phase"), p["metadata"]) for p in self.pods()]
            raise AssertionError(f"{error}\npods: {left}\nstatus: {self.status()}") from None

    def logs(self) -> str:
        return dump_folder(self.kubelet.root / "pods" / self.namespace)

    def kill_worker(self, attempt: int, index: int, oom: bool = False) -> str:
        name = f"{self.name}-a{attempt}-w{index}"
        if oom:
            self.kubelet.oom_kill(self.namespace, name)
        else:
            self.kubelet.kill(self.namespace, name)
        return name


def condition_in(status: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of type `type_` in an object's status (a FineTuneJob's, a Workload's); {} when absent."""
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def dump_folder(path: Path, limit: int = 4000) -> str:
    """The tail of every log file below `path`, for failure messages."""
    parts = []
    for log in sorted(path.rglob("*.log")):
        parts.append(f"--- {log} ---\n{log.read_text(errors='replace')[-limit:]}")
    return "\n".join(parts)


@dataclass(frozen=True)
class Inputs:
    """The tiny model and the dataset files, shared by every scenario of a session."""

    model: Path
    train: Path
    validation: Path


def make_inputs(root: Path, model: Path) -> Inputs:
    train, validation = tiny.write_dataset(root, "prompt-completion", train=96, validation=16)
    assert validation is not None
    return Inputs(model=model, train=train, validation=validation)


def a_scenario(name: str, inputs: Inputs) -> JobBuilder:
    """The scenarios' FineTuneJob (SCENARIO_SPEC on the tiny model and data, checkpoints on the claim):
    a builders.JobBuilder to add each scenario's own settings to."""
    job = tiny.a_tiny_job(inputs.model, inputs.train, inputs.validation, name=name).spec(SCENARIO_SPEC)
    return job.storage(f"pvc://{CLAIM}/{name}")


def submit(cluster: RealCluster, kubelet: ScheduledKubelet, namespace: str, job: JobBuilder) -> Job:
    """Create the job (validated by the API models first) in `namespace`, with its checkpoint claim."""
    cluster.ensure_namespace(namespace)
    cluster.ensure_claim(namespace, CLAIM)
    cluster.create(JOBS, namespace, job.build(validate=True))
    return Job(cluster, kubelet, namespace, job.name)


__all__ = ["CLAIM", "JOBS", "PODS", "Inputs", "Job", "a_scenario", "condition_in", "make_inputs", "submit"]
