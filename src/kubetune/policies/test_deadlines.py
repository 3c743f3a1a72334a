"""Deadlines: active deadline (suspension not counted), startup and scheduling timeouts, and how their
causes (a disruption before the relaunch, a volume still attached elsewhere, a preemption) change them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.operations import RetryPolicySpec
from kubetune.api.status import Condition, FineTuneJobStatus, Reason
from kubetune.policies.deadlines import (
    ATTACH_LOOKUP_AFTER_SECONDS,
    CAPACITY_RETURN_SECONDS,
    KUBERNETES_FORCE_DETACH_SECONDS,
    PREEMPTION_WAIT_SECONDS,
    VOLUME_RELEASE_SECONDS,
    Limits,
    active_deadline_left,
    attach_worth_looking_up,
    limits,
    relaunch_cause,
    startup_check_in,
    startup_verdict,
    startup_verdicts,
)
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import decide
from kubetune.policies.status import find_condition
from kubetune.policies.test_reconcile import launched, make_job, step, w

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicySpec(startup_timeout_seconds=60, scheduling_timeout_seconds=120)


def spec(deadline: int | None) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {"model": {"source": "hf://a/b"}, "dataset": {"train": "t.jsonl"}, "activeDeadlineSeconds": deadline}
    )


def resumed_at(seconds: int) -> list[Condition]:
    return [Condition(type="Suspended", status="False", last_transition_time=T0 + timedelta(seconds=seconds))]


@pytest.mark.parametrize(
    ("deadline", "status", "elapsed", "left"),
    [
        (None, FineTuneJobStatus(start_time=T0, phase="Running"), 1000, None),
        (100, FineTuneJobStatus(phase="Pending"), 1000, None),  # not started
        (100, FineTuneJobStatus(start_time=T0, phase="Running"), 40, 60),
        (100, FineTuneJobStatus(start_time=T0, phase="Running"), 100, 0),
        (100, FineTuneJobStatus(start_time=T0, phase="Suspended"), 1000, None),
        (100, FineTuneJobStatus(start_time=T0, phase="Running", conditions=resumed_at(500)), 550, 50),
    ],
)
def test_active_deadline(deadline: int | None, status: FineTuneJobStatus, elapsed: int, left: float | None) -> None:
    assert active_deadline_left(spec(deadline), status, T0 + timedelta(seconds=elapsed)) == left


def pending(**kw: Any) -> WorkerObservation:
    return WorkerObservation(index=2, attempt=1, state="pending", **kw)


@pytest.mark.parametrize(
    ("worker", "elapsed", "reason"),
    [
        (pending(waiting_reason="ImagePullBackOff", waiting_since=T0), 59, None),
        (pending(waiting_reason="ImagePullBackOff", waiting_since=T0), 60, Reason.IMAGE_PULL_FAILED),
        (pending(waiting_reason="ErrImagePull", waiting_since=T0), 61, Reason.IMAGE_PULL_FAILED),
        (pending(waiting_reason="CreateContainerConfigError", waiting_since=T0), 60, Reason.CONTAINER_CONFIG_ERROR),
        (pending(waiting_reason="ContainerCreating", waiting_since=T0), 59, None),
        (pending(waiting_reason="ContainerCreating", waiting_since=T0), 60, Reason.CONTAINER_CREATING_TIMEOUT),
        (
            pending(waiting_reason="ContainerCreating", waiting_message="Multi-Attach error", waiting_since=T0),
            6000,
            Reason.CONTAINER_CREATING_TIMEOUT,
        ),
        (pending(waiting_reason="PodInitializing", waiting_since=T0), 6000, None),
        (pending(unschedulable_since=T0), 119, None),
        (
            pending(unschedulable_since=T0, unschedulable_message="0/3 nodes: Insufficient nvidia.com/gpu"),
            120,
            Reason.UNSCHEDULABLE,
        ),
        (WorkerObservation(index=2, attempt=1, state="running", unschedulable_since=T0), 6000, None),
    ],
)
def test_startup_verdict(worker: WorkerObservation, elapsed: int, reason: str | None) -> None:
    verdict = startup_verdict(worker, POLICY, T0 + timedelta(seconds=elapsed))
    assert (verdict.reason if verdict else None) == reason
    if verdict is not None:
        assert "worker 2" in verdict.message


def test_startup_check_in_says_when_a_verdict_may_change() -> None:
    worker = pending(waiting_reason="ErrImagePull", waiting_since=T0, unschedulable_since=T0)
    assert startup_check_in(worker, POLICY, T0 + timedelta(seconds=10)) == 50
    assert startup_check_in(pending(), POLICY, T0) is None
    creating = pending(waiting_reason="ContainerCreating", waiting_since=T0)
    assert startup_check_in(creating, POLICY, T0 + timedelta(seconds=45)) == 15


def test_container_creating_message_names_the_likely_causes() -> None:
    worker = pending(waiting_reason="ContainerCreating", waiting_since=T0)
    verdict = startup_verdict(worker, POLICY, T0 + timedelta(seconds=61))
    assert verdict is not None
    assert "ContainerCreating after 61s" in verdict.message and "Multi-Attach" in verdict.message


# --- deadlines that know why: the relaunch's cause, a volume still attached elsewhere, a preemption ---

MULTI_ATTACH = 'Multi-Attach error for volume "pvc-1" Volume is already exclusively attached to one node'


def restarting(reason: str, value: str = "True") -> FineTuneJobStatus:
    return FineTuneJobStatus(phase="Pending", conditions=[Condition(type="Restarting", status=value, reason=reason)])


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (None, None),
        (FineTuneJobStatus(), None),  # a first attempt
        (restarting(Reason.PREEMPTED), Reason.PREEMPTED),
        (restarting(Reason.NODE_LOST), Reason.NODE_LOST),
        (restarting(Reason.DISRUPTED), Reason.DISRUPTED),
        (restarting(Reason.WORKER_FAILED), None),  # the job's own failure: no extra patience
        (restarting(Reason.PREEMPTED, "False"), None),  # the relaunched gang ran: the cause is spent
    ],
)
def test_the_relaunch_cause_is_the_disruption_on_a_restarting_condition_still_true(
    status: FineTuneJobStatus | None, cause: str | None
) -> None:
    assert relaunch_cause(status) == cause


@pytest.mark.parametrize(
    ("cause", "startup", "volume", "scheduling"),
    [
        (None, 60, VOLUME_RELEASE_SECONDS, 120),
        (Reason.WORKER_FAILED, 60, VOLUME_RELEASE_SECONDS, 120),
        (Reason.NODE_LOST, 60, VOLUME_RELEASE_SECONDS, CAPACITY_RETURN_SECONDS),
        (Reason.DISRUPTED, 60, VOLUME_RELEASE_SECONDS, CAPACITY_RETURN_SECONDS),
        (Reason.PREEMPTED, 60, VOLUME_RELEASE_SECONDS, PREEMPTION_WAIT_SECONDS),
    ],
)
def test_limits_by_cause(cause: str | None, startup: float, volume: float, scheduling: float | None) -> None:
    assert limits(POLICY, cause) == Limits(startup=startup, volume=volume, scheduling=scheduling)


def test_the_volume_bound_lies_past_kubernetes_force_detach_and_never_below_the_startup_timeout() -> None:
    assert VOLUME_RELEASE_SECONDS > KUBERNETES_FORCE_DETACH_SECONDS
    patient = RetryPolicySpec(startup_timeout_seconds=3600)
    assert limits(patient).volume == 3600


def held(**kw: Any) -> WorkerObservation:
    return pending(waiting_reason="ContainerCreating", waiting_since=T0, volume_held_elsewhere=MULTI_ATTACH, **kw)


@pytest.mark.parametrize(
    ("worker", "cause", "elapsed", "reason"),
    [
        # a volume still attached to another node waits past startupTimeoutSeconds, up to the bound
        (held(), None, 60, None),
        (held(), None, VOLUME_RELEASE_SECONDS - 1, None),
        (held(), None, VOLUME_RELEASE_SECONDS, Reason.VOLUME_STILL_ATTACHED),
        (held(), Reason.NODE_LOST, VOLUME_RELEASE_SECONDS - 1, None),
        (held(), Reason.NODE_LOST, VOLUME_RELEASE_SECONDS, Reason.VOLUME_STILL_ATTACHED),
        # an image that cannot be pulled is not excused by a disruption
        (pending(waiting_reason="ImagePullBackOff", waiting_since=T0), Reason.NODE_LOST, 60, Reason.IMAGE_PULL_FAILED),
        # ContainerCreating with no known cause keeps startupTimeoutSeconds, whatever the relaunch's cause
        (
            pending(waiting_reason="ContainerCreating", waiting_since=T0),
            Reason.PREEMPTED,
            60,
            Reason.CONTAINER_CREATING_TIMEOUT,
        ),
        # a preempted gang's relaunch waits for the capacity a day (its pods count against a quota meanwhile)
        (pending(unschedulable_since=T0), Reason.PREEMPTED, 120, None),
        (pending(unschedulable_since=T0), Reason.PREEMPTED, PREEMPTION_WAIT_SECONDS - 1, None),
        (pending(unschedulable_since=T0), Reason.PREEMPTED, PREEMPTION_WAIT_SECONDS, Reason.UNSCHEDULABLE),
        # after a node loss or an eviction, the capacity that left may come back: longer, not for ever
        (pending(unschedulable_since=T0), Reason.NODE_LOST, 120, None),
        (pending(unschedulable_since=T0), Reason.NODE_LOST, CAPACITY_RETURN_SECONDS - 1, None),
        (pending(unschedulable_since=T0), Reason.NODE_LOST, CAPACITY_RETURN_SECONDS, Reason.UNSCHEDULABLE),
        (pending(unschedulable_since=T0), Reason.DISRUPTED, CAPACITY_RETURN_SECONDS, Reason.UNSCHEDULABLE),
        # the job's own failure earns no patience
        (pending(unschedulable_since=T0), Reason.WORKER_FAILED, 120, Reason.UNSCHEDULABLE),
    ],
)
def test_startup_verdict_by_cause(
    worker: WorkerObservation, cause: str | None, elapsed: float, reason: str | None
) -> None:
    verdict = startup_verdict(worker, POLICY, T0 + timedelta(seconds=elapsed), cause)
    assert (verdict.reason if verdict else None) == reason


def test_a_volume_past_its_bound_fails_naming_the_way_out() -> None:
    verdict = startup_verdict(held(), POLICY, T0 + timedelta(seconds=VOLUME_RELEASE_SECONDS))
    assert verdict is not None and MULTI_ATTACH in verdict.message
    assert "node.kubernetes.io/out-of-service" in verdict.message and "worker 2" in verdict.message


def test_the_deadlines_of_a_relaunch_count_from_its_own_pods() -> None:
    """Attempt 1 started long ago; attempt 2's worker was scheduled 50 s ago: its clock starts there."""
    job = make_job(FineTuneJobStatus(phase="Pending", attempt=2, start_time=T0))
    later = T0 + timedelta(seconds=10_000)
    fresh = WorkerObservation(
        index=0, attempt=2, state="pending", waiting_reason="ImagePullBackOff", waiting_since=later
    )
    assert startup_verdicts(job, [fresh], later + timedelta(seconds=50)) == []
    assert [v.reason for v in startup_verdicts(job, [fresh], later + timedelta(seconds=300))] == [
        Reason.IMAGE_PULL_FAILED
    ]


@pytest.mark.parametrize(
    ("worker", "cause", "elapsed", "wait"),
    [
        (held(), None, 100, VOLUME_RELEASE_SECONDS - 100),
        (pending(waiting_reason="ContainerCreating", waiting_since=T0), None, 10, ATTACH_LOOKUP_AFTER_SECONDS - 10),
        (pending(waiting_reason="ContainerCreating", waiting_since=T0), None, 40, 20),  # the startup deadline
        (pending(unschedulable_since=T0), Reason.PREEMPTED, 100, PREEMPTION_WAIT_SECONDS - 100),
        (pending(unschedulable_since=T0), Reason.NODE_LOST, 100, CAPACITY_RETURN_SECONDS - 100),
    ],
)
def test_check_in_by_cause(worker: WorkerObservation, cause: str | None, elapsed: float, wait: float | None) -> None:
    assert startup_check_in(worker, POLICY, T0 + timedelta(seconds=elapsed), cause) == wait


@pytest.mark.parametrize(
    ("reason", "waited", "looks"),
    [
        ("ContainerCreating", ATTACH_LOOKUP_AFTER_SECONDS - 1, False),
        ("ContainerCreating", ATTACH_LOOKUP_AFTER_SECONDS, True),
        ("ImagePullBackOff", 1000, False),
        (None, 1000, False),
    ],
)
def test_the_attach_is_looked_up_only_for_a_worker_stuck_creating(
    reason: str | None, waited: float, looks: bool
) -> None:
    assert attach_worth_looking_up(reason, waited) is looks


def test_a_preempted_relaunch_waits_as_preempted_then_runs() -> None:
    """decide end to end: a preemption ends attempt 1; attempt 2 stays unschedulable far past
    schedulingTimeoutSeconds, Pending with the reason Preempted; it runs once the capacity is back."""
    job = launched(make_job())
    job, _ = step(job, [w(0), w(1)])
    job, decision = step(job, [w(0), w(1, "failed", disrupted=True, preempted=True, exit_code=143)])
    assert decision.status.phase == "Restarting" and decision.status.restarts == 0
    assert find_condition(decision.status, "Restarting").reason == Reason.PREEMPTED  # type: ignore[union-attr]
    job, decision = step(job, [], T0 + timedelta(seconds=60))
    assert decision.plan.create == (0, 1) and decision.status.attempt == 2
    scheduler = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    since = T0 + timedelta(seconds=61)
    gang = [w(0, "running", 2), w(1, "pending", 2, unschedulable_since=since, unschedulable_message=scheduler)]
    job, decision = step(job, gang, since + timedelta(seconds=1))
    assert (decision.status.phase, running_condition(decision.status)) == ("Pending", ("False", Reason.PREEMPTED))
    assert scheduler in (decision.status.message or "") and "higher-priority" in (decision.status.message or "")
    assert [e.reason for e in decision.events if e.type == "Warning"] == [Reason.PREEMPTED]
    job, decision = step(job, gang, since + timedelta(hours=23))
    assert decision.status.phase == "Pending" and not decision.events, "far past schedulingTimeoutSeconds, said once"
    assert decision.check_again_in == PREEMPTION_WAIT_SECONDS - 23 * 3600
    job, decision = step(job, [w(0, "running", 2), w(1, "running", 2)], since + timedelta(hours=23, seconds=1))
    assert decision.status.phase == "Running"
    assert find_condition(decision.status, "Restarting").status == "False"  # type: ignore[union-attr]


def test_a_volume_still_attached_after_a_node_loss_is_named_and_waited_for() -> None:
    """decide end to end: past startupTimeoutSeconds the relaunch waits, Running False with the reason
    VolumeStillAttached; past the bound it fails under that reason."""
    conditions = [
        Condition(type="Restarting", status="True", reason=Reason.NODE_LOST),
        Condition(type="Running", status="False", reason=Reason.NODE_LOST),
    ]
    job = make_job(FineTuneJobStatus(phase="Pending", attempt=2, start_time=T0, conditions=conditions))
    creating = w(1, "pending", 2, waiting_reason="ContainerCreating", waiting_since=T0)
    gang = [w(0, "running", 2), replace(creating, volume_held_elsewhere=MULTI_ATTACH)]
    past_startup = T0 + timedelta(seconds=job.spec.retry_policy.startup_timeout_seconds + 1)
    assert decide(job, [w(0, "running", 2), creating], past_startup).status.phase == "Failed", "not known: fails"
    job, decision = step(job, gang, past_startup)
    assert decision.status.phase == "Pending"
    assert running_condition(decision.status) == ("False", Reason.VOLUME_STILL_ATTACHED)
    assert MULTI_ATTACH in (decision.status.message or "")
    assert [e.reason for e in decision.events if e.type == "Warning"] == [Reason.VOLUME_STILL_ATTACHED]
    _, decision = step(job, gang, T0 + timedelta(seconds=VOLUME_RELEASE_SECONDS))
    failed = find_condition(decision.status, "Failed")
    assert decision.status.phase == "Failed" and failed is not None
    assert failed.reason == Reason.VOLUME_STILL_ATTACHED


def running_condition(status: FineTuneJobStatus) -> tuple[str, str] | None:
    condition = find_condition(status, "Running")
    return (condition.status, condition.reason) if condition is not None else None
