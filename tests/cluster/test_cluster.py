"""The scenarios on a real cluster: the operator from the Helm chart, trainer pods from the real image,
a real kubelet, scheduler and garbage collector. Skipped unless KUBETUNE_CLUSTER_TESTS=1 and a kubeconfig
are given; `tests/cluster/run-kind.sh` sets up a kind cluster for them (images, chart, claims with the
tests' tiny model and data) and runs them.

The assertions are the emulator scenarios' (tests/e2e/test_scenarios.py) where they apply. What a real
cluster adds: the API server's own schema and CEL validation refuses bad manifests (422), an OOM kill is
a real one (a memory limit below what the trainer needs), a disruption comes from the Eviction API, and a
killed worker is killed inside its container.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.builders import a_job
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(1200)]

#: Seconds between two checks of the cluster's state.
POLL = 1.0
GROUP, VERSION, PLURAL = "kubetune.io", "v1alpha1", "finetunejobs"
MAX_STEPS = 48
#: Claims and contents prepared by run-kind.sh.
MODEL = "pvc://kubetune-data/models/tiny"
TRAIN = "pvc://kubetune-data/data/tiny/train.jsonl"
VALIDATION = "pvc://kubetune-data/data/tiny/validation.jsonl"
#: Kills the trainer processes of a container (PID 1 is torchrun, which then fails the pod).
KILL_TRAINER = (
    "import os, signal\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    if int(pid) > 1 and b'train' in open(f'/proc/{pid}/cmdline', 'rb').read():\n"
    "        os.kill(int(pid), signal.SIGKILL)\n"
)


class RealCluster:
    """The few calls the scenarios make, through the official client and the given kubeconfig."""

    def __init__(self, namespace: str) -> None:
        from kubernetes import client, config

        config.load_kube_config()
        self.namespace = namespace
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()
        self.client = client

    def submit(self, name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        body = (
            a_job(name)
            .model(MODEL)
            .dataset(train=TRAIN, validation=VALIDATION, max_seq_length=64)
            .hyperparameters(max_steps=MAX_STEPS, epochs=5, learning_rate=3e-3, seed=7)
            .distributed(workers=2, processes_per_worker=1, accelerator="cpu", precision="fp32")
            .checkpointing(every_steps=8, keep=2)
            .retry(max_restarts=2, backoff_seconds=1)
            .storage(f"pvc://kubetune-checkpoints/{name}")
            .spec(overrides)
            .build()
        )
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return result

    def status(self, name: str) -> dict[str, Any]:
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return job.get("status") or {}

    def wait_phase(self, name: str, *phases: str, timeout: float = 600) -> dict[str, Any]:
        eventually(
            lambda: self.status(name).get("phase") in phases,
            timeout,
            interval=POLL,
            message=f"{name} to reach {phases}",
        )
        return self.status(name)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        conditions = self.status(name).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), {})

    def pods(self, name: str, attempt: int | None = None) -> list[Any]:
        selector = f"kubetune.io/job-name={name}" + (f",kubetune.io/attempt={attempt}" if attempt else "")
        items: list[Any] = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return items

    def wait_running(self, name: str, attempt: int, timeout: float = 600) -> list[Any]:
        def running() -> list[Any] | None:
            pods = self.pods(name, attempt)
            return pods if len(pods) == 2 and all(p.status.phase == "Running" for p in pods) else None

        pods: list[Any] = eventually(running, timeout, interval=POLL, message=f"attempt {attempt} of {name} to run")
        return pods

    def wait_progress(self, name: str, step: int, timeout: float = 600) -> None:
        progress = lambda: (self.status(name).get("progress") or {}).get("step", 0) >= step  # noqa: E731
        eventually(progress, timeout, interval=0.5, message=f"{name} to pass step {step}")

    def kill_trainer(self, pod: str) -> None:
        from kubernetes.stream import stream

        command = ["python", "-c", KILL_TRAINER]
        stream(self.core.connect_get_namespaced_pod_exec, pod, self.namespace, command=command, stdout=True)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def events(self, name: str) -> list[str]:
        selector = f"involvedObject.name={name}"
        return [e.message or "" for e in self.core.list_namespaced_event(self.namespace, field_selector=selector).items]


@pytest.fixture(scope="module")
def real() -> Iterator[RealCluster]:
    yield RealCluster(os.environ.get("KUBETUNE_CLUSTER_NAMESPACE", "kubetune-e2e"))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_quickstart_succeeded(real: RealCluster) -> None:
    """run-kind.sh ran the quickstart to Succeeded; its status must be complete."""
    status = real.wait_phase("quickstart", "Succeeded", "Failed", timeout=60)
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 0 and status["output"]["path"], status
    assert (status.get("metrics") or {}).get("trainLoss") is not None, status


def test_1_success(real: RealCluster) -> None:
    name = unique("success")
    real.submit(name)
    status = real.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["attempt"] == 1 and status["restarts"] == 0, status
    assert status["progress"]["step"] == MAX_STEPS, status
    assert status["evaluation"]["fineTuned"]["evalLoss"] > 0, status


def test_2_early_stop(real: RealCluster) -> None:
    name = unique("early")
    real.submit(name, {"evaluation": {"everySteps": 2}, "earlyStopping": {"patience": 1, "minDelta": 100.0}})
    status = real.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and real.condition(name, "EarlyStopped").get("status") == "True", status
    assert status["progress"]["step"] < MAX_STEPS, status


def test_3_killed_worker_resumes_from_the_checkpoint(real: RealCluster) -> None:
    name = unique("killed")
    real.submit(name, {"hyperparameters": {"maxSteps": 400, "epochs": 40}})
    pods = real.wait_running(name, attempt=1)
    real.wait_progress(name, 16)
    real.kill_trainer(pods[1].metadata.name)
    status = real.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["attempt"] == 2 and status["restarts"] == 1, status


def test_4_oom_killed_worker_is_retried_with_a_memory_hint(real: RealCluster) -> None:
    name = unique("oom")
    real.submit(name, {"resources": {"limits": {"memory": "200Mi"}}, "retryPolicy": {"maxRestarts": 1}})
    status = real.wait_phase(name, "Failed", "Succeeded")
    texts = [status.get("message") or "", *real.events(name)]
    assert any("OOMKilled" in t and "resources.limits.memory" in t for t in texts), texts
    assert status["restarts"] == 1, status


def test_5_eviction_is_replaced_without_counting(real: RealCluster) -> None:
    name = unique("evicted")
    real.submit(name, {"retryPolicy": {"maxRestarts": 0}})
    pods = real.wait_running(name, attempt=1)
    target = pods[1].metadata
    eviction = real.client.V1Eviction(metadata=real.client.V1ObjectMeta(name=target.name, namespace=target.namespace))
    real.core.create_namespaced_pod_eviction(target.name, target.namespace, eviction)
    status = real.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["restarts"] == 0 and status["attempt"] == 2, status


def test_6_missing_dataset_fails_at_once(real: RealCluster) -> None:
    name = unique("missing")
    real.submit(name, {"dataset": {"train": "pvc://kubetune-data/data/nope.jsonl"}})
    status = real.wait_phase(name, "Failed", "Succeeded")
    failed = real.condition(name, "Failed")
    assert status["restarts"] == 0 and failed.get("reason") == "DataError", status
    assert "nope.jsonl" in failed.get("message", ""), failed


def test_7_exhausted_restarts_fail_the_job_and_remove_its_pods(real: RealCluster) -> None:
    name = unique("exhausted")
    real.submit(name, {"retryPolicy": {"maxRestarts": 1}, "hyperparameters": {"maxSteps": 400, "epochs": 40}})
    for attempt in (1, 2):
        pods = real.wait_running(name, attempt)
        real.kill_trainer(pods[1].metadata.name)
    status = real.wait_phase(name, "Failed", "Succeeded")
    assert real.condition(name, "Failed").get("reason") == "MaxRestartsExceeded", status
    eventually(lambda: not real.pods(name), 120, interval=POLL, message="every pod to be gone")


def test_10_suspend_and_resume(real: RealCluster) -> None:
    name = unique("suspend")
    real.submit(name, {"hyperparameters": {"maxSteps": 400, "epochs": 40}})
    real.wait_running(name, attempt=1)
    real.wait_progress(name, 16)
    real.patch_spec(name, {"suspend": True})
    real.wait_phase(name, "Suspended", timeout=300)
    eventually(lambda: not real.pods(name), 300, interval=POLL, message="the suspended job's pods to be gone")
    real.patch_spec(name, {"suspend": False})
    status = real.wait_phase(name, "Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["restarts"] == 0, status


@pytest.mark.parametrize(
    ("mistake", "field"),
    [
        ({"distributed": {"workers": 0}}, "workers"),
        ({"earlyStopping": {"patience": 2}}, "evaluation"),
        ({"storage": {"checkpoints": "/tmp/x"}}, "checkpoints"),
    ],
)
# (An unknown field is not in this table: a real API server prunes unknown fields of a structural schema
# unless the client asks for strict field validation, as kubectl does and this client does not.)
def test_bad_manifests_are_refused_by_the_api_server(real: RealCluster, mistake: dict[str, Any], field: str) -> None:
    from kubernetes.client.exceptions import ApiException

    name = unique("bad")
    with pytest.raises(ApiException) as refused:
        real.submit(name, mistake)
    assert refused.value.status == 422 and field in (refused.value.body or ""), refused.value.body
    assert real.pods(name) == []
