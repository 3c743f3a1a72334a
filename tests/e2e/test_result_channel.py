"""Issue 14, items 5 and 8 on the real control plane: the whole result reaches the status, and progress
that cannot be read is said so.

Item 5: a job with prompting baselines, a reference model, the base-model comparison and exact match
(the largest result a run of the tiny model produces) ends with the whole evaluation and verdict in its
status, equal to the result.json rank 0 left on the checkpoint claim. Its result travels through rank 0's
`GET /result` (the termination message is capped at 4096 bytes by the kubelet): rank 0's log says the
operator took it. The channel's capacity with the largest result the API allows is tested without a
cluster (tests/integration/operator/test_result_channel.py).

Item 8: worker 0's progress port is made unreachable as a default-deny NetworkPolicy makes it (the
process kubelet drops connections to the pod's port 9400, tests/e2e/netfilter.py): the job says
ProgressUnavailable with the fix, and still finishes, its status taken from the termination message. The
operator made the attempt's NetworkPolicy (the chart's flag) under the chart's RBAC, selecting the
attempt's pods (the real node enforces it: tests/e2e/realnode/test_network_policy.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.outcome import TrainerResult
from kubetune.api.status import EvaluationSummary
from tests.e2e.jobs import Inputs, Job, a_scenario, make_inputs, submit
from tests.e2e.netfilter import INGRESS
from tests.e2e.node import ScheduledKubelet
from tests.e2e.podexec import pod_ip
from tests.e2e.realcluster import RealCluster
from tests.support.waiting import eventually

PROGRESS_PORT = 9400
NETWORK_POLICIES = "networking.k8s.io/v1/networkpolicies"


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("result-channel-data"), tiny_model)


def result_json(job: Job) -> TrainerResult:
    """The whole result rank 0 wrote beside the export, on the checkpoint claim."""
    return TrainerResult.model_validate_json((job.storage / "output" / "result.json").read_text())


def terminated_state(job: Job, index: int) -> dict[str, Any] | None:
    pod = next((p for p in job.pods(1) if p["metadata"]["name"].endswith(f"-w{index}")), None)
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or [{}]
    found: dict[str, Any] | None = (statuses[0].get("state") or {}).get("terminated")
    return found


def rank_zero_log(job: Job) -> str:
    return job.kubelet.log(job.namespace, f"{job.name}-a1-w0")


@pytest.mark.timeout(300)
def test_the_whole_evaluation_and_verdict_reach_the_status(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    evaluation = {
        "everySteps": 8,
        "compareBaseModel": True,
        "exactMatch": True,
        "maxNewTokens": 4,
        "maxExamples": 8,
        "baselines": {"zeroShot": True, "fewShotExamples": 2, "embeddings": "base-model"},
        "referenceModel": {"source": str(inputs.model)},
    }
    spec = a_scenario("tiny", inputs).evaluation(evaluation).hyperparameters(max_steps=16)
    job = submit(cluster, kubelet, "r5-whole-result", spec)
    status = job.wait_phase("Succeeded", "Failed", timeout=240)
    assert status["phase"] == "Succeeded", status
    whole = result_json(job)
    assert whole.evaluation is not None and whole.evaluation.approaches and whole.evaluation.verdict
    names = [row.name for row in whole.evaluation.approaches]
    assert names == ["base zero-shot", "base 2-shot", "reference zero-shot", "reference 2-shot", "fine-tuned"]
    # every field of the evaluation, the verdict included, exactly as result.json says
    assert EvaluationSummary.model_validate(status["evaluation"]) == whole.evaluation
    assert status["output"]["path"] == whole.output_path and status["progress"]["step"] == whole.step
    assert not any(c["type"] == "ResultIncomplete" for c in status["conditions"]), status["conditions"]
    # it came through GET /result, taken and confirmed by the operator (no wait ran out)
    log = rank_zero_log(job)
    assert "serving the whole result at GET /result" in log and "was not taken" not in log, log[-3000:]
    # confirmed, rank 0 exits at once (the status was written while it waited); the job keeps its pods
    terminated = eventually(lambda: terminated_state(job, 0), 30, message="worker 0 to end")
    assert terminated["exitCode"] == 0 and len(terminated["message"].encode()) <= 4096
    assert eventually(lambda: terminated_state(job, 1), 30, message="worker 1 to end")["exitCode"] == 0
    print(f"result.json {len(whole.wire().encode())} bytes; termination message {len(terminated['message'])}")


@pytest.fixture
def unreachable_rank_zero() -> Iterator[tuple[str, str]]:
    """Worker 0 of job `tiny` in namespace `r8-unreachable`, its port 9400 denied (as by a NetworkPolicy)."""
    namespace, name = "r8-unreachable", "tiny"
    ip = pod_ip(namespace, f"{name}-w0", name, f"{name}-a1-w0")
    INGRESS.deny(ip, PROGRESS_PORT)
    try:
        yield namespace, name
    finally:
        INGRESS.allow(ip, PROGRESS_PORT)


@pytest.mark.timeout(300)
def test_unreachable_progress_is_a_condition_with_the_fix_and_the_job_still_finishes(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, unreachable_rank_zero: tuple[str, str]
) -> None:
    namespace, name = unreachable_rank_zero
    job = submit(cluster, kubelet, namespace, a_scenario(name, inputs))

    def raised() -> dict[str, object] | None:
        condition = job.condition("ProgressUnavailable")
        return condition if condition is not None and condition["status"] == "True" else None

    condition = eventually(raised, 120, interval=0.5, message="ProgressUnavailable=True")
    assert condition["reason"] == "ProgressUnreachable"
    message = str(condition["message"])
    assert f":{PROGRESS_PORT}/progress" in message and "timed out" in message, message
    assert "NetworkPolicy" in message and "networkPolicy.enabled=true" in message, message
    events = [e for e in job.events() if e.get("reason") == "ProgressUnreachable"]
    assert events and events[0]["type"] == "Warning", events

    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    # rank 0 waited its handover time in vain, then ended; the status has what its termination message held
    assert "was not taken" in rank_zero_log(job)
    whole = result_json(job)
    assert status["progress"]["step"] == whole.step and status["output"]["path"] == whole.output_path
    assert EvaluationSummary.model_validate(status["evaluation"]) == whole.evaluation  # it fits: whole

    # the operator made the attempt's policy (before its pods), selecting them
    created = cluster.api.get(NETWORK_POLICIES, namespace, "tiny-a1")
    assert created is not None, "the operator made no NetworkPolicy for attempt 1"
    worker = next(p for p in job.pods(1) if p["metadata"]["name"].endswith("-w0"))["metadata"]["labels"]
    selector = created["spec"]["podSelector"]
    assert all(worker.get(k) == v for k, v in selector["matchLabels"].items()), json.dumps([worker, selector])
