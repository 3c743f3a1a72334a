"""Preemption during a relaunch on the real control plane (issue 27, deadlines that know why): a
higher-priority pod takes a worker's node; the real scheduler preempts the worker (DisruptionTarget
PreemptionByScheduler) and keeps the node for the preemptor, so the relaunched gang cannot be placed
whole. The job must wait, saying Preempted, far past `retryPolicy.schedulingTimeoutSeconds` (which would
otherwise fail it), and resume from its checkpoint, uncounted, once the node frees."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.status import Reason
from kubetune.operator import metrics
from tests.e2e.conftest import NODES
from tests.e2e.jobs import JOBS, MAX_STEPS, PODS, Inputs, Job, a_scenario, make_inputs, submit
from tests.e2e.jobs import condition_in as condition
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.e2e.test_scenarios import resumed_step
from tests.support.waiting import eventually

#: retryPolicy.schedulingTimeoutSeconds of the scenario (the API's least): without the preemption known as
#: the cause, the relaunch fails this long after its worker is found unschedulable.
SCHEDULING_TIMEOUT = 10
#: CPUs each worker and the preemptor ask for, of a node's 16: one worker per node, and no worker fits
#: beside the preemptor.
CPUS = "10"
NAMESPACE = "s19-preemption"
#: The preemptor's own namespace: it is no trainer, and need not pass the trainers' restricted profile.
PREEMPTOR_NAMESPACE = "s19-preemptor"
PRIORITY_CLASS = {
    "apiVersion": "scheduling.k8s.io/v1",
    "kind": "PriorityClass",
    "metadata": {"name": "kubetune-e2e-preemptor"},
    "value": 1_000_000,
    "preemptionPolicy": "PreemptLowerPriority",
}
PREEMPTOR = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "preemptor"},
    "spec": {
        "priorityClassName": "kubetune-e2e-preemptor",
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {"name": "main", "image": "pause", "command": ["sleep", "600"], "resources": {"requests": {"cpu": CPUS}}}
        ],
    },
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


@pytest.fixture
def preemptor(cluster: RealCluster, kubelet: ScheduledKubelet) -> Iterator[None]:
    """The PriorityClass; afterwards, whatever happened, the preemptor and the job are gone and their processes
    have ended (rank 0 may still serve its result), so that they hold no node's CPUs in later scenarios and
    no kubelet forwarder is left open at the session's end."""
    cluster.kubectl_ok("apply", "-f", "-", input=yaml.safe_dump(PRIORITY_CLASS))
    cluster.ensure_namespace(PREEMPTOR_NAMESPACE, restricted=False)
    yield
    cluster.delete(PODS, PREEMPTOR_NAMESPACE, "preemptor")
    cluster.delete(JOBS, NAMESPACE, "tiny")
    namespaces = (NAMESPACE, PREEMPTOR_NAMESPACE)
    eventually(lambda: not [ns for ns, _ in kubelet.running() if ns in namespaces], 90, message="the processes to end")


def reasons(job: Job) -> list[tuple[str, str]]:
    return [(e.get("type", ""), e.get("reason", "")) for e in job.events()]


def waiting_preempted(job: Job) -> dict[str, Any] | None:
    status = job.status()
    waiting = status.get("phase") == "Pending" and condition(status, "Running").get("reason") == Reason.PREEMPTED
    return status if waiting and status.get("attempt") == 2 else None


def unschedulable_since(job: Job) -> datetime | None:
    """When the scheduler first found no node for a worker of attempt 2 (None: none is unschedulable)."""
    for pod in job.pods(attempt=2):
        scheduled = condition(pod.get("status") or {}, "PodScheduled")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return datetime.fromisoformat(scheduled["lastTransitionTime"].replace("Z", "+00:00"))
    return None


@pytest.mark.timeout(360)
def test_19_a_higher_priority_pod_takes_a_node_during_the_relaunch_the_job_waits_preempted_then_resumes(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, preemptor: None
) -> None:
    spec = (
        a_scenario("tiny", inputs)
        .hyperparameters({"maxSteps": MAX_STEPS * 10, "epochs": 50})
        .resources(requests={"cpu": CPUS})
        .retry({"maxRestarts": 1, "backoffSeconds": 0, "schedulingTimeoutSeconds": SCHEDULING_TIMEOUT})
    )
    job = submit(cluster, kubelet, NAMESPACE, spec)
    pods = job.wait_running(attempt=1, timeout=120)
    assert sorted(p["spec"]["nodeName"] for p in pods) == NODES, "a worker on each node"
    job.wait_checkpoint(step=8)

    cluster.create(PODS, PREEMPTOR_NAMESPACE, PREEMPTOR)
    status = eventually(lambda: waiting_preempted(job), 120, message="attempt 2 waiting as Preempted")
    assert condition(status, "Restarting")["reason"] == Reason.PREEMPTED, status
    assert "higher-priority" in status["message"] and "Insufficient cpu" in status["message"], status
    taken = eventually(
        lambda: (cluster.api.get(PODS, PREEMPTOR_NAMESPACE, "preemptor") or {}).get("spec", {}).get("nodeName"),
        60,
        message="the preemptor to be bound to the node it freed",
    )
    assert taken in NODES

    # Past the scheduling deadline by the pod's own timestamp, then reconciled again: without the cause,
    # the job would have failed as Unschedulable by now.
    since = eventually(lambda: unschedulable_since(job), 30, message="a worker of attempt 2 unschedulable")
    past = since + timedelta(seconds=SCHEDULING_TIMEOUT)
    eventually(lambda: datetime.now(UTC) > past, SCHEDULING_TIMEOUT + 30, message="the scheduling timeout to pass")
    seen = metrics.reconciles(job.namespace, job.name)
    eventually(lambda: metrics.reconciles(job.namespace, job.name) >= seen + 4, 30, message="4 more reconciles")
    status = job.status()
    assert waiting_preempted(job) is not None, status
    assert (status["attempt"], status["restarts"]) == (2, 0), status
    assert ("Warning", Reason.PREEMPTED) in reasons(job) and ("Warning", "Unschedulable") not in reasons(job)

    cluster.delete(PODS, PREEMPTOR_NAMESPACE, "preemptor")
    status = job.wait_phase("Succeeded", "Failed", timeout=240)
    assert status["phase"] == "Succeeded", status
    assert (status["attempt"], status["restarts"]) == (2, 0), "the preemption cost no restart"
    assert condition(status, "Restarting")["status"] == "False", status
    step = resumed_step(job, attempt=2)
    assert step is not None and step >= 8, job.logs()
