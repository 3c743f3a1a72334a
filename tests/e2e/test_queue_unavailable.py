"""A queue is a team's quota: a job that names one never runs unqueued (issue 26, item 2), on the real
control plane.

The operator is restarted for this module without its Kueue integration (`--kueue off`, as an operator
started before Kueue was installed would be): a job naming a queue waits Pending with reason
QueueUnavailable and a Warning Event, and no pod, Workload or Service of it ever exists, while an
unqueued job beside it starts. The operator is put back as it was afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.jobs import JOBS, Inputs, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster, operator_settings
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def without_kueue(cluster: RealCluster) -> Iterator[None]:
    cluster.stop_operator()
    cluster.start_operator(dataclasses.replace(operator_settings(), kueue=False))
    try:
        yield
    finally:
        cluster.restart_operator()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


@pytest.mark.timeout(180)
def test_a_queued_job_waits_with_no_pod_while_the_operator_cannot_queue_it(
    without_kueue: None, cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "queue-unavailable"
    queued = submit(cluster, kubelet, namespace, a_scenario("queued", inputs).scheduling(queueName="team-a"))
    free = submit(cluster, kubelet, namespace, a_scenario("free", inputs))
    admitted = queued.wait_condition("Admitted", "QueueUnavailable")
    assert "LocalQueue team-a" in str(admitted["message"]) and "never runs unqueued" in str(admitted["message"])
    eventually(  # posted after the status is written
        lambda: [e for e in queued.events() if e.get("reason") == "QueueUnavailable" and e.get("type") == "Warning"],
        timeout=30,
        message="the QueueUnavailable Warning Event",
    )
    free.wait_running(attempt=1, timeout=120)  # the operator is at work: the unqueued job beside it started
    status = queued.status()
    assert status["phase"] == "Pending" and "startTime" not in status, status
    assert queued.pods() == [] and not [h for h in kubelet.history if h[0] == namespace and h[1].startswith("queued")]
    cluster.delete(JOBS, namespace, "free")  # its work is done here
    free.wait_gone()
