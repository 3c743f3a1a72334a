"""What a real cluster does to a job (issue 14), each on the real control plane: a quota too small for the
gang, a pod the cluster refuses, a gang the scheduler cannot place, a node lost mid-run, a job deleted and
re-created under the same name, a job written under a newer CRD, and a job deleted while the operator is
down. Each must end in a clear status (or simply work), never in a job that waits for ever or a silent
retry loop."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.jobs import JOBS, PODS, Inputs, Job, a_scenario, make_inputs, submit
from tests.e2e.jobs import condition_in as condition
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.kubeapi import api_path
from tests.support.waiting import eventually

QUOTAS = "v1/resourcequotas"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_NAME = "finetunejobs.kubetune.io"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


def reasons(job: Job) -> list[tuple[str, str]]:
    return [(e.get("type", ""), e.get("reason", "")) for e in job.events()]


def wait_for(job: Job, predicate: Any, what: str, timeout: float = 60) -> dict[str, Any]:
    try:
        return eventually(lambda: (s := job.status()) and predicate(s) and s, timeout, message=what)  # type: ignore[no-any-return]
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {job.status()}\nevents: {reasons(job)}\n{job.logs()}") from None


@pytest.mark.timeout(240)
def test_11_a_gang_larger_than_the_quota_waits_whole_and_starts_when_the_quota_grows(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "s11-quota"
    cluster.ensure_namespace(namespace)
    cluster.create(QUOTAS, namespace, {"metadata": {"name": "team"}, "spec": {"hard": {"pods": "1"}}})
    eventually(lambda: (cluster.api.get(QUOTAS, namespace, "team") or {}).get("status", {}).get("hard"), 30)
    job = submit(cluster, kubelet, namespace, a_scenario("tiny", inputs))
    status = wait_for(job, lambda s: condition(s, "Created").get("reason") == "QuotaExceeded", "QuotaExceeded")
    assert status["phase"] == "Pending" and condition(status, "Created")["status"] == "False", status
    assert "exceeded quota team" in status["message"] and "pods=2, 0 of 1 is used" in status["message"], status
    assert "startTime" not in status, "nothing was created: the job has not started"
    assert not job.pods(), "no part of the gang was created"
    assert ("Warning", "QuotaExceeded") in reasons(job)
    cluster.patch(QUOTAS, namespace, "team", {"spec": {"hard": {"pods": "4"}}})
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded" and status["restarts"] == 0, status
    assert condition(status, "Created")["status"] == "True" and status["startTime"], status


@pytest.mark.timeout(120)
def test_12_a_pod_the_cluster_refuses_fails_the_job_at_once_naming_the_field(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    refused = a_scenario("tiny", inputs).scheduling({"priorityClassName": "no-such-class"})
    job = submit(cluster, kubelet, "s12-refused-pod", refused)
    status = job.wait_phase("Failed", "Succeeded", timeout=60)
    assert status["phase"] == "Failed" and condition(status, "Failed")["reason"] == "PodRejected", status
    assert "spec.scheduling.priorityClassName" in status["message"], status
    assert "no PriorityClass with name no-such-class" in status["message"], status
    assert "startTime" not in status and condition(status, "Created").get("status") != "True", status
    assert ("Warning", "PodRejected") in reasons(job)
    assert not job.pods()


@pytest.mark.timeout(120)
def test_13_a_gang_the_scheduler_cannot_place_says_why(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    huge = a_scenario("tiny", inputs).resources({"requests": {"cpu": "64", "memory": "1Gi"}})
    job = submit(cluster, kubelet, "s13-unschedulable", huge)
    status = wait_for(job, lambda s: "Insufficient cpu" in s.get("message", ""), "the scheduler's reason")
    assert status["phase"] == "Pending" and "cannot be scheduled: 0/2 nodes are available" in status["message"]
    eventually(lambda: ("Warning", "Unschedulable") in reasons(job), 30, message="the Unschedulable event")
    cluster.delete(JOBS, job.namespace, job.name)
    job.wait_gone()


@pytest.fixture
def lost_node(kubelet: ScheduledKubelet) -> Iterator[list[str]]:
    """The name of the node a test loses (appended by the test); it comes back, empty, afterwards."""
    lost: list[str] = []
    yield lost
    for node in lost:
        kubelet.revive_node(node)


@pytest.mark.timeout(300)
def test_14_a_lost_node_restarts_the_gang_from_its_checkpoint_without_counting(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, lost_node: list[str]
) -> None:
    # long enough (about 10 s of training) that the node is lost mid-run, after the first checkpoint
    spec = (
        a_scenario("tiny", inputs)
        .hyperparameters({"maxSteps": 400, "epochs": 40})
        .retry({"maxRestarts": 0, "backoffSeconds": 0, "nodeLostGraceSeconds": 10})
    )
    job = submit(cluster, kubelet, "s14-node-loss", spec)
    pods = job.wait_running(attempt=1)
    job.wait_checkpoint(step=8)
    node = next(p["spec"]["nodeName"] for p in pods if p["metadata"]["name"].endswith("-w1"))
    lost_node.append(node)
    assert "tiny-a1-w1" in kubelet.lose_node(node), "the lost node ran worker 1"
    status = wait_for(job, lambda s: condition(s, "Restarting").get("reason") == "NodeLost", "NodeLost", 120)
    assert node in condition(status, "Restarting")["message"], status
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 2 and status["restarts"] == 0, "a lost node is not the job's failure"
    assert status["progress"]["step"] == 400, status
    resumed = re.search(r"resumed from checkpoint \S+ \(step (\d+) of", kubelet.log(job.namespace, "tiny-a2-w0"))
    assert resumed is not None and int(resumed.group(1)) >= 8, "attempt 2 resumed from the checkpoint"
    assert all(p["spec"]["nodeName"] != node for p in job.pods(attempt=2)), "attempt 2 avoided the lost node"
    assert ("Normal", "NodeLost") in reasons(job) or ("Warning", "NodeLost") in reasons(job)


@pytest.mark.timeout(300)
def test_15_a_job_deleted_and_created_again_at_once_runs_with_its_own_spec(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "s15-recreate"
    first = submit(cluster, kubelet, namespace, a_scenario("tiny", inputs))
    first.wait_running(attempt=1)
    old_uid = (cluster.job(namespace, "tiny") or {})["metadata"]["uid"]
    cluster.delete(JOBS, namespace, "tiny")
    again = a_scenario("tiny", inputs).hyperparameters({"maxSteps": 24}).storage("pvc://checkpoints/tiny-again")
    job = submit(cluster, kubelet, namespace, again)
    new_uid = (cluster.job(namespace, "tiny") or {})["metadata"]["uid"]
    assert new_uid != old_uid
    status = job.wait_phase("Succeeded", "Failed", timeout=240)
    assert status["phase"] == "Succeeded" and status["progress"]["totalSteps"] == 24, status
    assert (kubelet.claim_dir(namespace, "checkpoints") / "tiny-again" / "output" / "config.json").exists()
    for resource in (PODS, "v1/configmaps", "v1/services"):
        for child in cluster.objects(resource, namespace, {"kubetune.io/job-name": "tiny"}):
            owners = {ref["uid"] for ref in child["metadata"].get("ownerReferences") or []}
            assert owners == {new_uid}, f"{resource} {child['metadata']['name']} belongs to {owners}"


@pytest.fixture
def newer_crd(cluster: RealCluster) -> Iterator[None]:
    """The FineTuneJob CRD as a newer kubetune would install it: with a field this operator does not know."""
    path = api_path(CRDS, None, CRD_NAME)
    code, original = cluster.request("GET", path)
    assert code == 200, original
    newer = copy.deepcopy(original)
    spec_schema = newer["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["futureFeature"] = {"type": "string", "description": "a field of a later release"}
    code, body = cluster.request("PUT", path, newer)
    assert code == 200, body
    try:
        yield
    finally:
        code, current = cluster.request("GET", path)
        restored = copy.deepcopy(original)
        restored["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        code, body = cluster.request("PUT", path, restored)
        assert code == 200, body


@pytest.mark.timeout(240)
def test_16_a_job_written_under_a_newer_crd_runs_and_names_the_fields_it_ignored(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, newer_crd: None
) -> None:
    namespace = "s16-version-skew"
    cluster.ensure_namespace(namespace)
    cluster.ensure_claim(namespace, "checkpoints")
    manifest = a_scenario("tiny", inputs).build(validate=True)
    manifest["spec"]["futureFeature"] = "on"
    cluster.create(JOBS, namespace, manifest)
    assert (cluster.job(namespace, "tiny") or {})["spec"]["futureFeature"] == "on", "the server kept it"
    job = Job(cluster, kubelet, namespace, "tiny")
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    warnings = [e for e in job.events() if e.get("reason") == "UnknownFieldsIgnored"]
    assert len(warnings) == 1 and "spec.futureFeature" in warnings[0]["message"], reasons(job)


@pytest.mark.timeout(180)
def test_17_a_job_deleted_while_the_operator_is_down_goes_with_its_children(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    job = submit(cluster, kubelet, "s17-uninstall", a_scenario("tiny", inputs))
    job.wait_running(attempt=1)
    assert not (cluster.job(job.namespace, job.name) or {})["metadata"].get("finalizers"), "no finalizer to wait on"
    cluster.stop_operator()
    try:
        cluster.kubectl_ok("delete", "ftj", job.name, "-n", job.namespace, "--wait=true", "--timeout=30s")
        assert cluster.job(job.namespace, job.name) is None
        job.wait_gone(timeout=90)  # the garbage collector removes the gang, with no operator running
        for resource in ("v1/configmaps", "v1/services"):
            eventually(lambda r=resource: not cluster.objects(r, job.namespace, {"kubetune.io/job-name": "tiny"}), 30)
    finally:
        cluster.start_operator()
