"""Queueing scenarios against real Kueue (tests/support/kueue.py, `make kueue`): kubetune as Kueue's external
framework, on the real control plane with real trainer processes, two-worker CPU gangs.

The ClusterQueue holds one gang (2 CPUs); every scenario has its own namespace and LocalQueue. The
operator is restarted for this module with its default `--kueue auto` (the chart's `kueue.enabled: auto`),
which turns the integration on because Kueue's Workload API is now served, under the chart's RBAC.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.job import FineTuneJob
from kubetune.operator.workloads import workload_name
from tests.e2e.jobs import JOBS, MAX_STEPS, Inputs, Job, a_scenario, condition_in, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster, operator_settings
from tests.e2e.test_scenarios import resumed_step
from tests.support import kueue as kueue_support
from tests.support.builders import JobBuilder
from tests.support.controlplane import ROOT
from tests.support.kueue import Kueue
from tests.support.waiting import eventually

WORKLOADS = "kueue.x-k8s.io/v1beta2/workloads"
PRIORITY_CLASSES = [
    {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name}, "value": value}
    for name, value in (("kubetune-low", 100), ("kubetune-high", 1000))
]


@pytest.fixture(scope="module")
def kueue(cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    """Kueue running, and the operator with its Kueue integration on, for this module."""
    if not kueue_support.built():
        pytest.skip(f"Kueue {kueue_support.VERSION} is not built: `make kueue` (make test builds it)")
    running = Kueue(cluster.control_plane, tmp_path_factory.mktemp("kueue")).start()
    cluster.stop_operator()
    cluster.start_operator(operator_settings())  # `kueue` unset (`--kueue auto`): on, since Kueue's API is served
    cluster.kubectl_ok("apply", "-f", "-", input=yaml.safe_dump_all(PRIORITY_CLASSES))
    try:
        yield running
    finally:
        cluster.restart_operator()
        running.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


def queued(kueue: Kueue, cluster: RealCluster, namespace: str, job: JobBuilder) -> JobBuilder:
    cluster.ensure_namespace(namespace)
    return job.scheduling(queueName=kueue.local_queue(namespace))


def workloads(job: Job) -> list[dict[str, Any]]:
    return job.cluster.objects(WORKLOADS, job.namespace)


def workload(job: Job) -> dict[str, Any]:
    live = job.cluster.job(job.namespace, job.name)
    assert live is not None
    name = workload_name(FineTuneJob.model_validate(live))
    found = job.cluster.api.get(WORKLOADS, job.namespace, name)
    assert found is not None, f"no Workload {name}: {workloads(job)}"
    return found


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return condition_in(obj.get("status") or {}, type_)


def wait_queued(job: Job, timeout: float = 60) -> dict[str, Any]:
    """Wait until the job says it is queued (Admitted=False, reason Queued) with Kueue's own reason."""

    def queued_now() -> dict[str, Any] | None:
        status = job.status()
        admitted: dict[str, Any] = next((c for c in status.get("conditions") or [] if c["type"] == "Admitted"), {})
        waiting = admitted.get("reason") == "Queued" and "LocalQueue" in (status.get("message") or "")
        return status if waiting and "Workload" in status["message"] else None

    status: dict[str, Any] = eventually(queued_now, timeout, message=f"{job.name} to be queued")
    return status


def long_job(name: str, inputs: Inputs) -> JobBuilder:
    """Ten times scenario 1's steps (about 15 s of training): long enough to be preempted mid-run."""
    return a_scenario(name, inputs).hyperparameters(maxSteps=MAX_STEPS * 10, epochs=50)


@pytest.mark.timeout(60)
def test_k0_the_api_server_calls_kueues_webhooks_on_loopback(cluster: RealCluster, kueue: Kueue) -> None:
    """A Workload that only Kueue's validating webhook refuses (the `pods` resource is reserved to Kueue)."""
    container = {"name": "c", "image": "x", "resources": {"requests": {"pods": "1"}}}
    bad = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {"name": "webhook-probe", "namespace": "default"},
        "spec": {"podSets": [{"name": "main", "count": 1, "template": {"spec": {"containers": [container]}}}]},
    }
    done = cluster.control_plane.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad))
    assert done.returncode != 0 and "reserved for internal kueue use" in done.stderr, done.stderr


@pytest.mark.timeout(420)
def test_k1_quota_for_one_gang_queues_the_second(
    cluster: RealCluster, kubelet: ScheduledKubelet, kueue: Kueue, inputs: Inputs
) -> None:
    ns = "k1-quota"
    first = submit(cluster, kubelet, ns, queued(kueue, cluster, ns, a_scenario("first", inputs)))
    pods = first.wait_running(attempt=1, timeout=120)
    # the admitted flavor's node labels and tolerations are on the pods
    assert all(p["spec"]["nodeSelector"].items() >= kueue_support.FLAVOR_LABELS.items() for p in pods)
    assert all(kueue_support.FLAVOR_TOLERATIONS[0] in p["spec"]["tolerations"] for p in pods)
    second = submit(cluster, kubelet, ns, queued(kueue, cluster, ns, a_scenario("second", inputs)))
    status = wait_queued(second)
    assert status["phase"] == "Pending" and not second.pods(), status
    assert f"LocalQueue {kueue_support.LOCAL_QUEUE}" in status["message"], status
    assert first.wait_phase("Succeeded", "Failed", timeout=180)["phase"] == "Succeeded"
    eventually(lambda: condition(workload(first), "Finished").get("status") == "True", 30, message="Finished")
    assert second.wait_phase("Succeeded", "Failed", timeout=240)["phase"] == "Succeeded", second.logs()
    assert not second.pods(attempt=2), "one attempt each: no restart"


@pytest.mark.timeout(180)
def test_k2_a_gang_that_fits_no_flavor_stays_queued_with_kueues_reason(
    cluster: RealCluster, kubelet: ScheduledKubelet, kueue: Kueue, inputs: Inputs
) -> None:
    ns = "k2-no-fit"
    big = a_scenario("big", inputs).resources(requests={"cpu": "3", "memory": "1Gi"})
    job = submit(cluster, kubelet, ns, queued(kueue, cluster, ns, big))
    wait_queued(job)
    reason = eventually(lambda: condition(workload(job), "QuotaReserved").get("message"), 30, message="a reason")
    eventually(lambda: reason in job.status()["message"], 30, message="the job to give Kueue's reason")
    status = job.status()
    assert "couldn't assign flavors" in reason or "insufficient" in reason, reason
    assert status["phase"] == "Pending" and not job.pods()
    cluster.delete(JOBS, ns, "big")


@pytest.mark.timeout(480)
def test_k3_a_high_priority_job_preempts_a_low_one_which_resumes(
    cluster: RealCluster, kubelet: ScheduledKubelet, kueue: Kueue, inputs: Inputs
) -> None:
    ns = "k3-preempt"
    low_spec = long_job("low", inputs).scheduling(priorityClassName="kubetune-low")
    low = submit(cluster, kubelet, ns, queued(kueue, cluster, ns, low_spec))
    low.wait_running(attempt=1, timeout=120)
    low.wait_checkpoint(step=8)
    high_spec = a_scenario("high", inputs).scheduling(priorityClassName="kubetune-high")
    high = submit(cluster, kubelet, ns, queued(kueue, cluster, ns, high_spec))
    status = low.wait_phase("Suspended", timeout=60)
    assert "evicted by Kueue" in status["message"] and "Preempted" in status["message"], status
    low.wait_gone(timeout=60)
    assert high.wait_phase("Succeeded", "Failed", timeout=240)["phase"] == "Succeeded", high.logs()
    status = low.wait_phase("Succeeded", "Failed", timeout=300)
    assert status["phase"] == "Succeeded" and status["attempt"] == 2 and status["restarts"] == 0, status
    step = resumed_step(low, attempt=2)
    assert step is not None and step >= 8, low.logs()


@pytest.mark.timeout(120)
def test_k4_deleting_a_queued_job_leaves_no_workload(
    cluster: RealCluster, kubelet: ScheduledKubelet, kueue: Kueue, inputs: Inputs
) -> None:
    ns = "k4-delete"
    big = a_scenario("queued", inputs).resources(requests={"cpu": "3", "memory": "1Gi"})
    job = submit(cluster, kubelet, ns, queued(kueue, cluster, ns, big))
    wait_queued(job)
    assert len(workloads(job)) == 1
    cluster.delete(JOBS, ns, "queued")
    eventually(lambda: not workloads(job), 60, message="the Workload to be garbage-collected")
    assert not job.pods()


@pytest.mark.timeout(120)
def test_k5_the_kueue_example_is_admitted_and_launched_as_written(cluster: RealCluster, kueue: Kueue) -> None:
    """examples/lora-early-stopping.yaml applied unchanged (`kubectl apply`, created suspended with a queue
    name): its Workload is admitted by the GPU queue, admission unsuspends it and its worker is created
    with the GPU flavor's node labels. Its claims (model, dataset) are not provided here, so the worker waits
    unscheduled instead of running a Qwen fine-tune on this machine; the job is then deleted."""
    example = yaml.safe_load((ROOT / "examples" / "lora-early-stopping.yaml").read_text())
    ns, name = example["metadata"]["namespace"], example["metadata"]["name"]
    cluster.ensure_namespace(ns)
    kueue.local_queue(ns, example["spec"]["scheduling"]["queueName"], kueue_support.GPU_CLUSTER_QUEUE)
    assert "created" in cluster.kubectl_ok("apply", "-f", str(ROOT / "examples" / "lora-early-stopping.yaml"))

    def launched() -> list[dict[str, Any]] | None:
        pods = cluster.pods(ns, name)
        return pods if pods else None

    pods = eventually(launched, 60, message="the example's worker to be created once admitted")
    assert pods[0]["spec"]["nodeSelector"].items() >= kueue_support.GPU_FLAVOR_LABELS.items(), pods[0]["spec"]
    job = cluster.job(ns, name)
    assert job is not None and job["spec"]["suspend"] is False, job
    admitted = next(c for c in job["status"]["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "True", job["status"]
    cluster.delete(JOBS, ns, name)
