"""The Workload of a queued job, and what the operator reads from and writes back to it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.operator import workloads
from kubetune.operator.builders import BuildSettings
from kubetune.policies.queueing import WorkloadObservation
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOB = (
    a_job("demo")
    .in_namespace("ns")
    .metadata(uid="1234-abcd")
    .workers(2)
    .scheduling(queueName="team-a", priorityClassName="high")
    .to_job()
)


def test_one_pod_set_of_workers_with_the_queue_priority_and_owner() -> None:
    workload = workloads.build_workload(JOB, BuildSettings(trainer_image="img"), priority=1000)
    spec = workload["spec"]
    assert spec["queueName"] == "team-a"
    assert spec["priority"] == 1000
    assert spec["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"}
    [pod_set] = spec["podSets"]
    assert (pod_set["name"], pod_set["count"]) == ("workers", 2)
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    assert workload["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    assert workload["metadata"]["name"] == workloads.workload_name(JOB)


def test_no_priority_class_ref_without_its_value() -> None:
    spec = workloads.build_workload(JOB, BuildSettings(trainer_image="img"), priority=None)["spec"]
    assert "priorityClassRef" not in spec and "priority" not in spec


def condition(type_: str, status: str, reason: str = "R", message: str = "m") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "x"}


ADMISSION = {"clusterQueue": "cq", "podSetAssignments": [{"name": "workers", "flavors": {"cpu": "f", "memory": "f"}}]}
FLAVOR = {"spec": {"nodeLabels": {"pool": "cpu"}, "tolerations": [{"key": "t", "operator": "Exists"}]}}


@pytest.mark.parametrize(
    ("status", "flavors", "expected"),
    [
        ({}, [], WorkloadObservation("w")),
        (
            {"conditions": [condition("QuotaReserved", "False", "Pending", "insufficient quota")]},
            [],
            WorkloadObservation("w", pending="insufficient quota"),
        ),
        (
            {"admission": ADMISSION, "conditions": [condition("QuotaReserved", "True"), condition("Admitted", "True")]},
            [FLAVOR],
            WorkloadObservation(
                "w",
                admitted=True,
                quota_reserved=True,
                node_labels={"pool": "cpu"},
                tolerations=({"key": "t", "operator": "Exists"},),
            ),
        ),
        (
            {
                "admission": ADMISSION,
                "conditions": [condition("Admitted", "True"), condition("Evicted", "True", "Preempted", "by x")],
            },
            [],
            WorkloadObservation("w", admitted=True, quota_reserved=True, evicted="Preempted: by x"),
        ),
        ({"conditions": [condition("Finished", "True")]}, [], WorkloadObservation("w", finished=True)),
    ],
)
def test_observe_workload(status: dict[str, Any], flavors: list[dict[str, Any]], expected: WorkloadObservation) -> None:
    assert workloads.observe_workload({"metadata": {"name": "w"}, "status": status}, flavors) == expected


def test_assigned_flavors_once_each() -> None:
    assert workloads.assigned_flavors({"status": {"admission": ADMISSION}}) == ["f"]


@pytest.mark.parametrize(("reason", "requeued"), [("Preempted", "True"), ("AdmissionCheck", "False")])
def test_release_gives_the_quota_back(reason: str, requeued: str) -> None:
    workload = {
        "metadata": {"resourceVersion": "7"},
        "status": {"admission": ADMISSION, "conditions": [condition("Evicted", "True", reason, "gone")]},
    }
    patch = workloads.release_patch(workload, T0)
    assert patch["metadata"]["resourceVersion"] == "7" and patch["status"]["admission"] is None
    by_type = {c["type"]: c for c in patch["status"]["conditions"]}
    assert by_type["QuotaReserved"]["status"] == "False" and by_type["Admitted"]["status"] == "False"
    assert (by_type["Requeued"]["status"], by_type["Requeued"]["reason"]) == (requeued, reason)
    assert by_type["Evicted"]["status"] == "True"  # Kueue's own condition is left to Kueue


def test_finish_marks_the_workload_finished() -> None:
    patch = workloads.finish_patch({"metadata": {"resourceVersion": "3"}, "status": {}}, "Succeeded", T0)
    [finished] = patch["status"]["conditions"]
    assert (finished["type"], finished["status"], finished["reason"]) == ("Finished", "True", "Succeeded")
    assert finished["lastTransitionTime"] == "2026-01-01T00:00:00Z"
