"""Table tests of the brake on mass node loss: the thresholds, the hold, its end, and the grace across it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from kubetune.api.job import FineTuneJob
from kubetune.api.status import ConditionType, Reason
from kubetune.policies.gang import WorkerRef
from kubetune.policies.mass_node_loss import ClusterNodes, Outage, Readiness, Thresholds, assess, decide_with_outage
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import Decision
from kubetune.policies.status import find_condition
from kubetune.policies.test_reconcile import T0, launched, make_job, step, w

pytestmark = pytest.mark.timeout(10)

MASS = Outage(True, "2 of 2 nodes running trainers and 2 of 2 nodes are not Ready")
LOCAL = Outage(False, "1 of 2 nodes running trainers and 1 of 3 nodes are not Ready")
GRACE = 120  # retryPolicy.nodeLostGraceSeconds by default
LONG_AGO = T0 - timedelta(seconds=10 * GRACE)


def nodes(all_not_ready: int, all_total: int, trainers_not_ready: int, trainers_total: int) -> ClusterNodes:
    return ClusterNodes(
        all=Readiness(ready=all_total - all_not_ready, not_ready=all_not_ready),
        trainers=Readiness(ready=trainers_total - trainers_not_ready, not_ready=trainers_not_ready),
    )


@pytest.mark.parametrize(
    ("cluster", "mass"),
    [
        # tiny clusters: below three silent nodes only "none Ready" is an outage (the controller's rule)
        (nodes(0, 1, 0, 1), False),
        (nodes(1, 1, 1, 1), True),  # the only node silent: the control plane lost it
        (nodes(1, 2, 1, 1), False),  # one of two: a machine failing
        (nodes(1, 2, 1, 2), False),
        (nodes(2, 2, 2, 2), True),  # both silent (the e2e scenario)
        (nodes(2, 3, 2, 2), False),  # two of three, 67 %, but only two: handled as lost
        (nodes(3, 3, 2, 2), True),
        # ten nodes
        (nodes(6, 10, 4, 4), True),  # 60 % of all, every trainer node
        (nodes(5, 10, 4, 4), False),  # 50 % of all: below the share
        (nodes(6, 10, 1, 4), False),  # most nodes silent, the trainers' mostly not: their node is lost
        (nodes(6, 10, 3, 5), True),  # 60 % of both
        (nodes(10, 10, 3, 3), True),
        # a hundred nodes
        (nodes(55, 100, 10, 10), True),  # exactly the share (the controller's >=)
        (nodes(54, 100, 10, 10), False),
        (nodes(8, 100, 8, 8), False),  # a whole GPU pool, a small part of the cluster: its own outage
        (nodes(60, 100, 2, 2), True),  # both trainer nodes silent within a cluster-wide outage
        (nodes(60, 100, 2, 3), False),  # two of three trainer nodes: not more than two
        # nothing runs trainers: nothing to hold
        (nodes(10, 10, 0, 0), False),
    ],
)
def test_the_thresholds_follow_the_node_lifecycle_controller(cluster: ClusterNodes, mass: bool) -> None:
    outage = assess(cluster, Thresholds())
    assert outage.mass is mass
    assert f"{cluster.all.not_ready} of {cluster.all.total} nodes are not Ready" in outage.summary


@pytest.mark.parametrize(
    ("share", "cluster", "mass"),
    [
        (None, nodes(2, 2, 2, 2), False),  # the brake switched off: every silent node is lost after the grace
        (0.9, nodes(8, 10, 4, 4), False),
        (0.9, nodes(9, 10, 4, 4), True),
        (0.3, nodes(3, 10, 3, 4), True),
    ],
)
def test_the_share_is_a_setting(share: float | None, cluster: ClusterNodes, mass: bool) -> None:
    assert assess(cluster, Thresholds(unhealthy_share=share)).mass is mass


def running_job() -> FineTuneJob:
    """A gang of two, running since long before T0."""
    job, _ = step(launched(make_job()), [w(0), w(1)], T0 - timedelta(seconds=20 * GRACE))
    return job


def silent(index: int, since: datetime = LONG_AGO, **kw: Any) -> WorkerObservation:
    return w(index, node=f"node-{index}", node_lost_since=since, **kw)


def decide_and_write(
    job: FineTuneJob, workers: list[WorkerObservation], now: datetime, outage: Outage | None
) -> tuple[FineTuneJob, Decision]:
    decision = decide_with_outage(job, workers, now, outage)
    return job.model_copy(update={"status": decision.status}), decision


def outage_condition(decision: Decision) -> tuple[str, str] | None:
    condition = find_condition(decision.status, ConditionType.NODE_OUTAGE)
    return None if condition is None else (condition.status, condition.reason)


def test_a_mass_outage_holds_the_job_and_says_so_once() -> None:
    job, decision = decide_and_write(running_job(), [silent(0), silent(1)], T0, MASS)
    assert decision.status.phase == "Running" and decision.plan.force_delete == () and decision.plan.delete == ()
    assert decision.status.restarts == 0 and not decision.counted_restart
    assert outage_condition(decision) == ("True", Reason.MASS_NODE_LOSS)
    assert "node-0, node-1" in (decision.status.message or "") and MASS.summary in (decision.status.message or "")
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", Reason.MASS_NODE_LOSS)]
    _, again = decide_and_write(job, [silent(0), silent(1)], T0 + timedelta(seconds=10 * GRACE), MASS)
    assert again.status == decision.status and not again.events and again.plan.force_delete == ()


def test_without_the_brake_the_same_silence_force_deletes_the_gang() -> None:
    for outage in (LOCAL, None):
        decision = decide_with_outage(running_job(), [silent(0), silent(1)], T0, outage)
        assert decision.status.phase == "Restarting"
        assert decision.plan.force_delete == (WorkerRef(1, 0), WorkerRef(1, 1))
        assert outage_condition(decision) is None and not decision.counted_restart


def test_a_job_whose_nodes_report_is_not_held_by_an_outage_elsewhere() -> None:
    decision = decide_with_outage(running_job(), [w(0, node="node-0"), w(1, node="node-1")], T0, MASS)
    assert outage_condition(decision) is None and decision.events == ()


def test_the_nodes_return_and_training_goes_on_without_a_restart() -> None:
    job, _ = decide_and_write(running_job(), [silent(0), silent(1)], T0, MASS)
    later = T0 + timedelta(seconds=600)
    job, back = decide_and_write(job, [w(0, node="node-0"), w(1, node="node-1")], later, LOCAL)
    assert back.status.phase == "Running" and back.status.restarts == 0 and back.status.attempt == 1
    assert back.plan.create == () and back.plan.delete == () and back.plan.force_delete == ()
    assert outage_condition(back) == ("False", Reason.NODE_OUTAGE_OVER)
    assert [(e.type, e.reason) for e in back.events] == [("Normal", Reason.NODE_OUTAGE_OVER)]
    _, after = decide_and_write(job, [w(0, node="node-0"), w(1, node="node-1")], later + timedelta(seconds=5), None)
    assert after.events == () and after.status.message == "attempt 1: 2 worker(s) training"


@pytest.mark.parametrize(
    ("seconds_after_lift", "phase", "force"),
    [
        (0, "Running", ()),  # the brake lifts: the grace starts again, not at the node's first silence
        (GRACE - 1, "Running", ()),
        (GRACE, "Restarting", (WorkerRef(1, 1),)),  # silent for the grace past the lift: lost, as normally
    ],
)
def test_the_grace_counts_from_the_lift_when_the_outage_shrinks(
    seconds_after_lift: int, phase: str, force: tuple[WorkerRef, ...]
) -> None:
    job, _ = decide_and_write(running_job(), [silent(0), silent(1)], T0, MASS)
    lift = T0 + timedelta(seconds=300)
    still_silent = [w(0, node="node-0"), silent(1)]  # node-0 came back, node-1 did not
    job, lifted = decide_and_write(job, still_silent, lift, LOCAL)
    assert outage_condition(lifted) == ("False", Reason.NODE_OUTAGE_OVER)
    assert [e.reason for e in lifted.events] == [Reason.NODE_OUTAGE_OVER]
    assert "node-1 still silent" in lifted.events[0].message
    assert lifted.plan.force_delete == () and lifted.check_again_in == GRACE
    _, decision = decide_and_write(job, still_silent, lift + timedelta(seconds=seconds_after_lift), LOCAL)
    assert decision.status.phase == phase and decision.plan.force_delete == force
    assert decision.status.restarts == 0


def test_a_node_silent_only_after_the_lift_keeps_its_own_clock() -> None:
    job, _ = decide_and_write(running_job(), [silent(0), silent(1)], T0, MASS)
    job, _ = decide_and_write(job, [w(0, node="node-0"), w(1, node="node-1")], T0 + timedelta(seconds=60), None)
    went = T0 + timedelta(seconds=100)
    decision = decide_with_outage(
        job, [w(0, node="node-0"), silent(1, since=went)], went + timedelta(seconds=GRACE), None
    )
    assert decision.plan.force_delete == (WorkerRef(1, 1),)


def test_a_peer_failing_during_the_brake_restarts_uncounted_and_force_deletes_nothing() -> None:
    workers = [w(0, "failed", exit_code=7, node="node-0", finished_at=T0), silent(1)]
    job, decision = decide_and_write(running_job(), workers, T0, MASS)
    assert decision.status.phase == "Restarting" and decision.status.restarts == 0 and not decision.counted_restart
    assert decision.plan.force_delete == () and WorkerRef(1, 1) in decision.plan.delete
    assert outage_condition(decision) == ("True", Reason.MASS_NODE_LOSS)
    deleting = [workers[0], silent(1, deleting=True)]
    job, waiting = decide_and_write(job, deleting, T0 + timedelta(seconds=3 * GRACE), MASS)
    assert waiting.plan.force_delete == () and waiting.plan.create == (), "the old gang's silent pod is waited for"
    lift = T0 + timedelta(seconds=4 * GRACE)
    job, _ = decide_and_write(job, deleting, lift, LOCAL)
    _, gone = decide_and_write(job, deleting, lift + timedelta(seconds=GRACE), LOCAL)
    assert gone.plan.force_delete == (WorkerRef(1, 1),)


def test_a_job_that_ends_during_the_brake_is_no_longer_held() -> None:
    job, _ = decide_and_write(running_job(), [silent(0), silent(1)], T0, MASS)
    short = job.model_copy(update={"spec": job.spec.model_copy(update={"active_deadline_seconds": 60})})
    decision = decide_with_outage(short, [silent(0), silent(1)], T0 + timedelta(seconds=60), MASS)
    assert decision.status.phase == "Failed" and decision.plan.force_delete == ()
    assert outage_condition(decision) == ("False", Reason.NODE_OUTAGE_OVER)
