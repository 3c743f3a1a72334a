"""Table tests of what a real cluster does to a job: refused creates, unschedulable gangs, lost nodes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kubetune.api.status import ConditionType, Reason
from kubetune.policies.gang import WorkerRef
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import CreateRefusal, decide, refused
from kubetune.policies.status import find_condition
from kubetune.policies.test_reconcile import T0, launched, make_job, step, w

QUOTA = CreateRefusal(True, Reason.QUOTA_EXCEEDED, "exceeded quota team: the gang of 2 worker(s) asks for pods=2")
INVALID = CreateRefusal(
    False, Reason.POD_REJECTED, "refused the worker pod made from spec.scheduling.priorityClassName"
)


def test_a_quota_refusal_keeps_the_job_pending_removes_the_partial_gang_and_retries() -> None:
    job = launched(make_job())
    decision = refused(job, [w(0, "pending")], QUOTA, T0)
    created = find_condition(decision.status, ConditionType.CREATED)
    assert decision.status.phase == "Pending" and created is not None and created.status == "False"
    assert created.reason == Reason.QUOTA_EXCEEDED and "exceeded quota team" in (decision.status.message or "")
    assert decision.plan.delete == (WorkerRef(1, 0),) and decision.status.restarts == 0
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", Reason.QUOTA_EXCEEDED)]
    job = job.model_copy(update={"status": decision.status})
    again = decide(job, [], T0 + timedelta(seconds=5))
    assert again.plan.create == (0, 1), "retried: the gang is asked for again"
    assert again.status == decision.status.model_copy(update={"observed_generation": 1}), "the reason stays"
    assert not again.events
    _, created_now = step(job, [w(0, "pending"), w(1, "pending")], T0 + timedelta(seconds=9))
    condition = find_condition(created_now.status, ConditionType.CREATED)
    assert condition is not None and condition.status == "True" and created_now.status.start_time is not None
    assert [e.reason for e in created_now.events] == [Reason.GANG_CREATED]


def test_an_invalid_pod_fails_the_job_at_once_naming_the_field() -> None:
    decision = refused(launched(make_job()), [w(0, "pending")], INVALID, T0)
    assert decision.status.phase == "Failed" and decision.status.start_time is None
    assert "spec.scheduling.priorityClassName" in (decision.status.message or "")
    assert Reason.POD_REJECTED in [e.reason for e in decision.events]


def test_an_unschedulable_gang_says_why_in_the_schedulers_words() -> None:
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pending = [w(i, "pending", unschedulable_since=T0, unschedulable_message=message) for i in (0, 1)]
    job, decision = step(launched(make_job()), pending)
    assert decision.status.phase == "Pending" and message in (decision.status.message or "")
    assert {(e.type, e.reason) for e in decision.events} == {
        ("Warning", Reason.UNSCHEDULABLE),
        ("Normal", Reason.GANG_CREATED),
    }
    _, again = step(job, pending, T0 + timedelta(seconds=1))
    assert not again.events, "the same reason is not posted twice"


LOST_AT = T0 - timedelta(seconds=200)


@pytest.mark.parametrize(
    ("workers", "phase", "reason", "force"),
    [
        # within the grace (120 s): nothing yet, the node may come back
        ([w(0), w(1, node="node-a", node_lost_since=T0 - timedelta(seconds=30))], "Running", None, ()),
        # past the grace: a disruption, not counted; the lost worker is force-deleted
        ([w(0), w(1, node="node-a", node_lost_since=LOST_AT)], "Restarting", Reason.NODE_LOST, (WorkerRef(1, 1),)),
        # within the grace but its peer failed (the collective timed out): the node loss is the cause
        ([w(0, "failed", exit_code=1), w(1, node="node-a", node_lost_since=T0 - timedelta(seconds=5))],
         "Restarting", Reason.NODE_LOST, ()),
        # already being deleted by someone (taint eviction): force-deleted past the grace
        ([w(0), w(1, node="node-a", node_lost_since=LOST_AT, deleting=True)], "Restarting", Reason.NODE_LOST,
         (WorkerRef(1, 1),)),
    ],
)  # fmt: skip
def test_node_loss(
    workers: list[WorkerObservation], phase: str, reason: str | None, force: tuple[WorkerRef, ...]
) -> None:
    job, _ = step(launched(make_job()), [w(0), w(1)], T0 - timedelta(seconds=300))
    decision = decide(job, workers, T0)
    assert decision.status.phase == phase
    assert decision.plan.force_delete == force
    if reason is not None:
        restarting = find_condition(decision.status, ConditionType.RESTARTING)
        assert restarting is not None and restarting.reason == reason and "node-a" in restarting.message
        assert decision.status.restarts == 0 and not decision.counted_restart
    else:
        assert decision.check_again_in is not None and decision.check_again_in <= 90


@pytest.mark.parametrize(
    ("failed_seconds_ago", "peer", "phase"),
    [
        (5, w(1), "Running"),  # the peer looks alive: wait for its node's fate before counting anything
        (5, w(1, node="node-a", node_lost_since=T0 - timedelta(seconds=1)), "Restarting"),  # explained: NodeLost
        (90, w(1), "Restarting"),  # nobody explained it within the window: counted as the peer loss it is
        (5, w(1, "failed", exit_code=1), "Restarting"),  # the peer failed itself: no wait
        (None, w(1), "Running"),  # being handed over by rank 0 (no end time yet): recent
    ],
)
def test_a_peer_lost_failure_waits_for_its_cause(failed_seconds_ago: int | None, peer: object, phase: str) -> None:
    job, _ = step(launched(make_job()), [w(0), w(1)], T0 - timedelta(seconds=300))
    ended = None if failed_seconds_ago is None else T0 - timedelta(seconds=failed_seconds_ago)
    lost_peer = w(0, "failed", exit_code=7, finished_at=ended)
    decision = decide(job, [lost_peer, peer], T0)  # type: ignore[list-item]
    assert decision.status.phase == phase
    if phase == "Restarting" and getattr(peer, "node_lost_since", None) is not None:
        assert decision.status.restarts == 0
