"""End-to-end scenarios: the real operator under the chart's RBAC, real DeepSpeed trainer processes (a
tiny model, two workers of one CPU process each) run by the process kubelet on the nodes the real
scheduler picks, against the real control plane (etcd, kube-apiserver with production admission
plugins, controller-manager, scheduler).

Every scenario has its own namespace (Pod Security `restricted`); they share one control plane, operator
and kubelet for the session and
run one after another (two cores: concurrent jobs only slow each other's start-up). Scenario 3 compares
its final weights with scenario 1's run (same seed, data and spec), so it reuses that run as its
uninterrupted reference instead of training one of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.jobs import CLAIM, JOBS, MAX_STEPS, PODS, RESUMED, Inputs, Job, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import Fault, RealCluster
from tests.support import tiny
from tests.support.waiting import eventually


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


def load_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    weights: dict[str, Any] = {}
    for file in files:
        weights |= load_file(str(file))
    return weights


def resumed_step(job: Job, attempt: int) -> int | None:
    """The step rank 0 of `attempt` resumed from, as its log says; None when it started fresh."""
    match = RESUMED.search(job.kubelet.log(job.namespace, f"{job.name}-a{attempt}-w0"))
    return int(match.group(1)) if match else None


def starts(kubelet: ScheduledKubelet, namespace: str) -> list[str]:
    """Names of the pods whose container the kubelet started in `namespace`, in name order (attempt, then
    worker index: the two workers of a gang start at the same time, on either node, in either order)."""
    return sorted(name for ns, name, what in kubelet.history if ns == namespace and what == "started")


@pytest.fixture(scope="session")
def succeeded(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, tmp_path_factory: pytest.TempPathFactory
) -> Job:
    """Scenario 1's run, submitted with `kubectl apply` and its default (server-side schema) validation;
    also the uninterrupted reference of scenario 3."""
    path = tmp_path_factory.mktemp("kubectl") / "tiny.yaml"
    path.write_text(yaml.safe_dump(a_scenario("tiny", inputs).build(validate=True)))
    cluster.ensure_namespace("s1-success")
    cluster.ensure_claim("s1-success", CLAIM)
    assert "created" in cluster.kubectl_ok("apply", "-n", "s1-success", "-f", str(path))
    job = Job(cluster, kubelet, "s1-success", "tiny")
    job.wait_phase("Succeeded", "Failed", timeout=180)
    return job


@pytest.mark.timeout(240)
def test_1_success(succeeded: Job) -> None:
    status = succeeded.status()
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 1 and status["restarts"] == 0
    assert status["progress"]["step"] == MAX_STEPS == status["progress"]["totalSteps"]
    metrics = status.get("metrics") or {}
    assert metrics.get("trainLoss", 0) > 0 and metrics.get("learningRate", 0) > 0, status
    assert status["evaluation"]["fineTuned"]["evalLoss"] > 0, status
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = succeeded.storage / "output"
    assert status["output"]["path"]
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert model.config.num_hidden_layers == 2 and len(tokenizer) > 0
    assert starts(succeeded.kubelet, "s1-success") == ["tiny-a1-w0", "tiny-a1-w1"]


@pytest.mark.timeout(240)
def test_2_early_stop(cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs) -> None:
    # minDelta far above any change of the loss: the second evaluation never counts as an improvement
    early = a_scenario("tiny", inputs).evaluation(every_steps=2).early_stopping(patience=1, min_delta=100.0)
    job = submit(cluster, kubelet, "s2-early-stop", early)
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    condition = job.condition("EarlyStopped")
    assert condition is not None and condition["status"] == "True", status
    assert status["progress"]["step"] < MAX_STEPS, status
    assert (job.storage / "output" / "config.json").exists()


@pytest.mark.timeout(240)
def test_3_sigkill_replaces_the_gang_and_resumes(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, succeeded: Job
) -> None:
    job = submit(cluster, kubelet, "s3-sigkill", a_scenario("tiny", inputs))
    job.wait_running(attempt=1)
    job.wait_checkpoint(step=8)
    job.kill_worker(attempt=1, index=1)
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 2 and status["restarts"] == 1, status
    step = resumed_step(job, attempt=2)
    assert step is not None and 8 <= step < MAX_STEPS, job.logs()
    assert starts(kubelet, "s3-sigkill") == ["tiny-a1-w0", "tiny-a1-w1", "tiny-a2-w0", "tiny-a2-w1"]
    import torch

    ours, reference = load_weights(job.storage / "output"), load_weights(succeeded.storage / "output")
    assert ours.keys() == reference.keys()
    for key, value in ours.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.timeout(240)
def test_4_oom_killed_worker_is_retried_with_a_memory_hint(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    job = submit(cluster, kubelet, "s4-oom", a_scenario("tiny", inputs))
    job.wait_running(attempt=1)
    job.kill_worker(attempt=1, index=0, oom=True)
    eventually(lambda: job.status().get("attempt") == 2, 60, message="attempt 2")
    texts = [job.status().get("message") or ""] + [c.get("message", "") for c in job.status()["conditions"]]
    texts += [e.get("message", "") for e in job.events()]
    hinted = [t for t in texts if "OOMKilled" in t and "resources.limits.memory" in t]
    assert hinted, texts
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded" and status["restarts"] == 1, status


@pytest.mark.timeout(240)
def test_5_disruption_is_replaced_without_counting(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    # maxRestarts 0: the job can only finish if the disruption is not counted as a restart
    job = submit(cluster, kubelet, "s5-disruption", a_scenario("tiny", inputs).retry(max_restarts=0))
    pods = job.wait_running(attempt=1)
    victim = pods[1]["metadata"]["name"]
    # as the cluster disrupts a pod: the Eviction API marks it DisruptionTarget and deletes it, in one request
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": job.namespace}}
    code, answer = cluster.request("POST", f"/api/v1/namespaces/{job.namespace}/pods/{victim}/eviction", eviction)
    assert code == 201, answer
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 2 and status["restarts"] == 0, status


@pytest.mark.timeout(120)
def test_6_missing_dataset_fails_at_once(cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs) -> None:
    missing = "/nonexistent/e2e/train.jsonl"
    job = submit(cluster, kubelet, "s6-permanent", a_scenario("tiny", inputs).train(missing))
    status = job.wait_phase("Failed", "Succeeded", timeout=90)
    assert status["phase"] == "Failed", status
    assert status["restarts"] == 0 and status["attempt"] == 1, status
    failed = job.condition("Failed")
    assert failed is not None and failed["reason"] == "DataError", status
    assert missing in failed["message"], failed
    assert {name for name in starts(kubelet, "s6-permanent")} == {"tiny-a1-w0", "tiny-a1-w1"}


@pytest.mark.timeout(150)
def test_7_exhausted_restarts_fail_the_job_and_remove_its_pods(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    job = submit(cluster, kubelet, "s7-exhausted", a_scenario("tiny", inputs).retry(max_restarts=1))
    for attempt in (1, 2):
        job.wait_running(attempt=attempt)
        job.kill_worker(attempt=attempt, index=1)
    status = job.wait_phase("Failed", "Succeeded", timeout=90)
    assert status["phase"] == "Failed" and status["restarts"] == 1, status
    assert job.condition("Failed")["reason"] == "MaxRestartsExceeded", status  # type: ignore[index]
    eventually(
        lambda: not [key for key in kubelet.running() if key[0] == job.namespace], 60, message="no container to run"
    )
    assert starts(kubelet, job.namespace) == ["tiny-a1-w0", "tiny-a1-w1", "tiny-a2-w0", "tiny-a2-w1"]
    # This namespace had both gangs' pods (above): every one of them deleted, not only stopped.
    job.wait_gone(timeout=20)


@pytest.fixture
def operator_process(cluster: RealCluster, tmp_path: Path) -> Iterator[Any]:
    """`kubetune operator` as a process with a kubeconfig of the chart's ServiceAccount (through the fault
    proxy), in place of the in-process operator for the duration of a test."""
    kubeconfig = cluster.operator_kubeconfig(tmp_path / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    command = [sys.executable, "-m", "kubetune.cli", "operator", "-A", "--metrics-port", "0", "--health-port", "0"]
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / f"operator-{len(processes)}.log").open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    cluster.stop_operator()
    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)
        cluster.start_operator()


@pytest.mark.timeout(240)
def test_8_operator_killed_mid_run(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, operator_process: Any
) -> None:
    first = operator_process()
    job = submit(cluster, kubelet, "s8-operator-restart", a_scenario("tiny", inputs))
    job.wait_running(attempt=1, timeout=90)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    operator_process()
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, status
    assert starts(kubelet, job.namespace) == ["tiny-a1-w0", "tiny-a1-w1"]
    names = [p["metadata"]["name"] for p in cluster.objects(PODS, job.namespace)]
    assert len(names) == len(set(names)) <= 2


@pytest.mark.timeout(240)
def test_9_api_faults(cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs) -> None:
    namespace = "s9-api-faults"
    faults = [
        Fault("CREATE", status, 1, plural=plural, namespace=namespace)
        for plural in ("pods", "configmaps", "services")
        for status in (409, 429, 500)
    ]
    faults += [Fault("UPDATE", status, 1, plural="finetunejobs", namespace=namespace) for status in (409, 429, 500)]
    for fault in faults:
        cluster.inject(fault)
    job = submit(cluster, kubelet, namespace, a_scenario("tiny", inputs))
    try:
        status = job.wait_phase("Succeeded", "Failed", timeout=180)
    finally:
        served = [(f.action, f.plural, f.status, f.served) for f in faults]
        for fault in faults:
            fault.times = 0
    assert status["phase"] == "Succeeded", status
    assert all(count == 1 for *_, count in served), served
    names = [p["metadata"]["name"] for p in cluster.objects(PODS, namespace)]
    assert len(names) == len(set(names))


def running_row(cluster: RealCluster, namespace: str) -> list[str] | None:
    """The cells of `kubectl get ftj`'s row of a Running job with progress and a train loss; None if none."""
    for line in cluster.kubectl_ok("get", "ftj", "-n", namespace).splitlines()[1:]:
        cells = line.split()  # NAME PHASE PROGRESS TRAIN-LOSS EVAL-LOSS RESTARTS AGE
        if cells[1] == "Running" and cells[2] != "0" and cells[3] != "<none>":
            return cells
    return None


@pytest.mark.timeout(240)
def test_10_suspend_and_resume(cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs) -> None:
    job = submit(cluster, kubelet, "s10-suspend", a_scenario("tiny", inputs))
    job.wait_running(attempt=1)
    job.wait_checkpoint(step=8)
    # `kubectl get ftj` while it runs: the printer columns with the operator's live values
    row = eventually(lambda: running_row(cluster, job.namespace), 30, message="a Running row with progress")
    assert row[0] == "tiny" and 0 < int(row[2]) < 100 and float(row[3]) > 0, row
    cluster.patch(JOBS, job.namespace, job.name, {"spec": {"suspend": True}})
    job.wait_phase("Suspended", timeout=60)
    job.wait_gone(timeout=60)
    kept = sorted(p.name for p in job.storage.glob("step-*"))
    assert kept, "the checkpoints must survive the suspension"
    cluster.patch(JOBS, job.namespace, job.name, {"spec": {"suspend": False}})
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["restarts"] == 0 and status["attempt"] == 2, status
    step = resumed_step(job, attempt=2)
    assert step is not None and 8 <= step < MAX_STEPS, job.logs()


@pytest.mark.timeout(240)
def test_preference_tuning_dpo(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A DPO job (pairs, a held-out test split) runs to Succeeded; its reward figures and its verdict
    against the reference reach the status."""
    folder = tmp_path_factory.mktemp("pairs")
    train = tiny.write_jsonl(folder / "train.jsonl", tiny.preference_examples(56))
    validation = tiny.write_jsonl(folder / "validation.jsonl", tiny.preference_examples(8, start=56))
    dpo = a_scenario("dpo", inputs).train(train).validation(validation)
    dpo = dpo.spec(
        {
            "dataset": {"format": "preference", "testSplit": 0.15},
            "method": {"type": "dpo", "dpo": {"beta": 0.5}},
            "hyperparameters": {"maxSteps": 12, "epochs": 3, "learningRate": 2e-3},
            "evaluation": {"everySteps": 4},
        }
    )
    job = submit(cluster, kubelet, "s11-dpo", dpo)
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    metrics = status["metrics"]
    assert 0 <= metrics["trainRewards"]["rewardAccuracy"] <= 1, metrics
    assert metrics["evalRewards"]["rewardMargin"] is not None, metrics
    evaluation = status["evaluation"]
    assert evaluation["scoredOn"] == "test", evaluation
    rows = {row["name"]: row for row in evaluation["approaches"]}
    assert rows["fine-tuned"]["examples"] == rows["reference (starting model)"]["examples"] == 9, rows  # 15% of 56
    assert rows["fine-tuned"]["preferenceAccuracy"] > rows["reference (starting model)"]["preferenceAccuracy"], rows
    assert "preference accuracy" in evaluation["verdict"], evaluation
    assert (job.storage / "output" / "config.json").exists()


@pytest.mark.timeout(120)
def test_kubectl_gets_and_deletes_the_succeeded_job(succeeded: Job) -> None:
    """Runs last: it deletes scenario 1's job (its exported weights stay on the claim)."""
    run = succeeded.cluster.kubectl_ok
    namespace = ["-n", succeeded.namespace]
    table = run("get", "ftj", *namespace).splitlines()
    assert table[0].split()[:3] == ["NAME", "PHASE", "PROGRESS"] and table[1].split()[:3] == [
        "tiny",
        "Succeeded",
        "100",
    ]
    assert run("get", "finetunejob", "tiny", *namespace, "-o", "jsonpath={.status.phase}") == "Succeeded"
    pods = run("get", "pods", *namespace, "-l", "kubetune.io/job-name=tiny", "-o", "name").split()
    assert sorted(pods) == [f"pod/tiny-a1-w{i}" for i in (0, 1)] or pods == [], pods
    assert "deleted" in run("delete", "ftj", "tiny", *namespace, "--timeout=60s")
    missing = succeeded.cluster.control_plane.kubectl("get", "ftj", "tiny", *namespace)
    assert missing.returncode != 0 and "NotFound" in missing.stderr, missing
    eventually(lambda: not succeeded.pods(), 60, message="the job's pods to be collected with it")
