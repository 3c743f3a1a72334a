"""Pods as a kubelet reports them -> what the policies are told (a table of pod states)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api.outcome import TrainerResult
from kubetune.operator.observe import looks_up_attach, observe_pod, owned_by
from kubetune.policies.deadlines import ATTACH_LOOKUP_AFTER_SECONDS
from kubetune.policies.observed import WorkerObservation

pytestmark = pytest.mark.timeout(10)

T = "2026-01-01T00:00:00Z"
T_DT = datetime(2026, 1, 1, tzinfo=UTC)
RESULT = TrainerResult(outcome="Failed", reason="DataError", message="bad line 3", retryable=False)


def pod(status: dict[str, Any] | None = None, deleting: bool = False, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "j-a2-w1",
        "creationTimestamp": T,
        "labels": {"kubetune.io/job-name": "j", "kubetune.io/worker-index": "1", "kubetune.io/attempt": "2", **labels},
    }
    if deleting:
        meta["deletionTimestamp"] = T
    return {"metadata": meta, "status": status or {}}


def container(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "trainer", "state": state}]


def obs(**kw: Any) -> WorkerObservation:
    return WorkerObservation(index=1, attempt=2, **kw)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, obs(state="pending", waiting_since=T_DT)),
        (
            {"phase": "Pending", "containerStatuses": container({"waiting": {"reason": "ContainerCreating"}})},
            obs(state="pending", waiting_reason="ContainerCreating", waiting_since=T_DT),
        ),
        (
            {"phase": "Running", "containerStatuses": container({"running": {}})},
            obs(state="running", waiting_since=T_DT),
        ),
        (
            {"phase": "Succeeded", "containerStatuses": container({"terminated": {"exitCode": 0}})},
            obs(state="succeeded", exit_code=0, waiting_since=T_DT),
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": container({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
            },
            obs(state="failed", exit_code=137, oom_killed=True, waiting_since=T_DT),
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": container(
                    {"terminated": {"exitCode": 3, "message": RESULT.termination_message()}}
                ),
            },
            obs(state="failed", exit_code=3, result=RESULT, waiting_since=T_DT),
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": container({"terminated": {"exitCode": 1, "message": "Traceback: boom"}}),
            },
            obs(state="failed", exit_code=1, message="Traceback: boom", waiting_since=T_DT),
        ),
        (
            {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "node low on memory",
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "TerminationByKubelet",
                        "message": "evicted",
                    }
                ],
            },
            obs(
                state="failed",
                message="node low on memory",
                disrupted=True,
                disruption_message="evicted",
                waiting_since=T_DT,
            ),
        ),
        (
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes",
                        "lastTransitionTime": T,
                    }
                ],
            },
            obs(state="pending", unschedulable_since=T_DT, unschedulable_message="0/3 nodes", waiting_since=T_DT),
        ),
        (
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:05:00Z"}
                ],
                "containerStatuses": container({"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}),
            },
            obs(
                state="pending",
                waiting_reason="ImagePullBackOff",
                waiting_message="not found",
                waiting_since=datetime(2026, 1, 1, 0, 5, tzinfo=UTC),
            ),
        ),
        ({"phase": "Unknown"}, obs(state="running", waiting_since=T_DT)),  # node unreachable: not a failure yet
    ],
)
def test_observe_pod(status: dict[str, Any], expected: WorkerObservation) -> None:
    assert observe_pod(pod(status)) == expected


def test_a_pod_being_deleted_says_so() -> None:
    assert observe_pod(pod({"phase": "Running"}, deleting=True)).deleting


@pytest.mark.parametrize(
    ("labels", "owned"),
    [({}, True), ({"kubetune.io/job-name": "j2"}, False), ({"kubetune.io/job-name": "jj"}, False)],
)
def test_owned_by_checks_labels_client_side(labels: dict[str, str], owned: bool) -> None:
    assert owned_by(pod(None, False, **labels), "j") is owned


@pytest.mark.parametrize(
    ("owners", "owned"),
    [(["uid-1"], True), (["uid-0"], False), ([], False), (["uid-0", "uid-1"], True)],
)
def test_owned_by_checks_the_owner_uid(owners: list[str], owned: bool) -> None:
    worker = pod(None, False)
    worker["metadata"]["ownerReferences"] = [{"uid": uid, "kind": "FineTuneJob", "name": "j"} for uid in owners]
    assert owned_by(worker, "j", "uid-1") is owned


def test_a_pod_preempted_by_the_scheduler_is_told_apart_from_other_disruptions() -> None:
    def disrupted(reason: str) -> WorkerObservation:
        condition = {"type": "DisruptionTarget", "status": "True", "reason": reason, "message": "m"}
        return observe_pod(pod({"phase": "Failed", "conditions": [condition]}))

    assert disrupted("PreemptionByScheduler").preempted and disrupted("PreemptionByScheduler").disrupted
    assert not disrupted("EvictionByEvictionAPI").preempted and disrupted("EvictionByEvictionAPI").disrupted


MULTI_ATTACH = 'Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node'


def event(reason: str, message: str, last: str = T) -> dict[str, Any]:
    return {"reason": reason, "message": message, "lastTimestamp": last, "type": "Warning"}


@pytest.mark.parametrize(
    ("events", "held"),
    [
        ([], None),
        ([event("FailedMount", "Unable to attach or mount volumes: timed out waiting for the condition")], None),
        ([event("FailedAttachVolume", "AttachVolume.Attach failed for volume: rpc error")], None),
        ([event("FailedAttachVolume", MULTI_ATTACH)], MULTI_ATTACH),
        (
            [
                event("FailedAttachVolume", MULTI_ATTACH + " (new)", "2026-01-01T00:02:00Z"),
                event("FailedAttachVolume", MULTI_ATTACH, "2026-01-01T00:01:00Z"),
            ],
            MULTI_ATTACH + " (new)",
        ),
    ],
)
def test_a_volume_still_attached_elsewhere_is_read_from_the_pods_events(
    events: list[dict[str, Any]], held: str | None
) -> None:
    creating = pod({"phase": "Pending", "containerStatuses": container({"waiting": {"reason": "ContainerCreating"}})})
    assert observe_pod(creating, None, events).volume_held_elsewhere == held
    running = pod({"phase": "Running", "containerStatuses": container({"running": {}})})
    assert observe_pod(running, None, events).volume_held_elsewhere is None, "only a worker still waiting"


@pytest.mark.parametrize(
    ("waiting", "node", "seconds", "looks"),
    [
        ("ContainerCreating", "node-a", ATTACH_LOOKUP_AFTER_SECONDS, True),
        ("ContainerCreating", "node-a", ATTACH_LOOKUP_AFTER_SECONDS - 1, False),
        ("ContainerCreating", None, 3600, False),  # not scheduled: nothing is attached yet
        ("ImagePullBackOff", "node-a", 3600, False),
    ],
)
def test_the_events_are_read_only_for_a_pod_stuck_creating(
    waiting: str, node: str | None, seconds: float, looks: bool
) -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": T}
    stuck = pod(
        {
            "phase": "Pending",
            "conditions": [scheduled],
            "containerStatuses": container({"waiting": {"reason": waiting}}),
        }
    )
    stuck["spec"] = {"nodeName": node} if node else {}
    assert looks_up_attach(stuck, T_DT + timedelta(seconds=seconds)) is looks
