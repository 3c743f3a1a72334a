"""Deadlines: active deadline (suspension not counted), startup and scheduling timeouts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.operations import RetryPolicySpec
from kubetune.api.status import Condition, FineTuneJobStatus, Reason
from kubetune.policies.deadlines import active_deadline_left, startup_check_in, startup_verdict
from kubetune.policies.observed import WorkerObservation

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
