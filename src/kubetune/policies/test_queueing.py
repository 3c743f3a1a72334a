"""Queueing through Kueue: each row is (job, observed Workload, workers) -> what the job says and does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.api.job import FineTuneJob
from kubetune.api.status import ConditionType, FineTuneJobStatus
from kubetune.policies import queueing
from kubetune.policies.gang import WorkerRef
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.queueing import WorkloadObservation
from kubetune.policies.reconcile import decide
from kubetune.policies.status import find_condition, set_condition
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
QUEUED = a_job("demo").in_namespace("ns").metadata(generation=1).workers(2).scheduling(queueName="team-a")

WAITING = WorkloadObservation("wl", pending="couldn't assign flavors to pod set workers: insufficient quota for cpu")
ADMITTED = WorkloadObservation(
    "wl",
    admitted=True,
    quota_reserved=True,
    node_labels={"pool": "cpu"},
    tolerations=({"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"},),
)
EVICTED = WorkloadObservation("wl", admitted=True, quota_reserved=True, evicted="Preempted: preempted by ns/high")
REQUEUED = WorkloadObservation("wl", pending="insufficient quota")
FINISHED = WorkloadObservation("wl", admitted=True, quota_reserved=True, finished=True)


def job(status: FineTuneJobStatus | None = None, suspend: bool = False, queue: bool = True) -> FineTuneJob:
    built = (QUEUED if queue else a_job("demo").in_namespace("ns").workers(2)).suspended(suspend).to_job()
    return built.model_copy(update={"status": status})


def w(index: int, state: str = "running", attempt: int = 1) -> WorkerObservation:
    return WorkerObservation(index=index, attempt=attempt, state=state)  # type: ignore[arg-type]


RUNNING = FineTuneJobStatus(phase="Running", attempt=1, start_time=T0)
#: Running after Kueue admitted it (the status an admitted job has).
ADMITTED_RUNNING = set_condition(RUNNING, ConditionType.ADMITTED, "True", "WorkloadAdmitted", "admitted", T0)
HELD_AFTER_EVICTION = FineTuneJobStatus(phase="Suspended", attempt=1, start_time=T0)


@pytest.mark.parametrize(
    ("status", "observation", "workers", "phase", "admitted", "reason", "create", "delete"),
    [
        # waiting for quota: Pending, Kueue's message, no pod
        (None, WAITING, [], "Pending", "False", "Queued", (), ()),
        # admitted: the gang launches and the job says Admitted
        (None, ADMITTED, [], "Pending", "True", "WorkloadAdmitted", (0, 1), ()),
        # evicted while running: the gang is removed, as a suspension removes it
        (ADMITTED_RUNNING, EVICTED, [w(0), w(1)], "Suspended", "False", "Evicted", (), (0, 1)),
        # admission given back, waiting again: stays Suspended, no pod
        (HELD_AFTER_EVICTION, REQUEUED, [], "Suspended", "False", "Queued", (), ()),
        # re-admitted: the next attempt launches (from the last checkpoint)
        (HELD_AFTER_EVICTION, ADMITTED, [], "Pending", "True", "WorkloadAdmitted", (0, 1), ()),
    ],
)
def test_a_queued_job_runs_only_while_admitted(
    status: FineTuneJobStatus | None,
    observation: WorkloadObservation | None,
    workers: list[WorkerObservation],
    phase: str,
    admitted: str,
    reason: str,
    create: tuple[int, ...],
    delete: tuple[int, ...],
) -> None:
    decision = decide(job(status), workers, T0, queue=observation)
    assert decision.status.phase == phase
    condition = find_condition(decision.status, ConditionType.ADMITTED)
    assert condition is not None and (condition.status, condition.reason) == (admitted, reason)
    assert decision.plan.create == create
    assert tuple(ref.index for ref in decision.plan.delete) == delete
    if status is HELD_AFTER_EVICTION and create:
        assert decision.plan.attempt == 2  # a new attempt: it resumes from the checkpoint


def test_the_queued_message_names_the_queue_and_kueues_reason() -> None:
    decision = decide(job(), [], T0, queue=WAITING)
    assert decision.status.message is not None
    assert "LocalQueue team-a" in decision.status.message
    assert "insufficient quota for cpu" in decision.status.message


@pytest.mark.parametrize("queue", [False, True])
def test_a_supervisor_without_queues_launches(queue: bool) -> None:
    """Not queued, or a supervisor with no queues at all (`kubetune run`: no observation): it launches."""
    decision = decide(job(queue=queue), [], T0)
    assert decision.plan.create == (0, 1)
    assert find_condition(decision.status, ConditionType.ADMITTED) is None


UNAVAILABLE = queueing.QueueingUnavailable("the operator runs without its Kueue integration (--kueue off)")


@pytest.mark.parametrize(
    ("status", "workers", "phase", "delete"),
    [
        (None, [], "Pending", ()),  # never launched: waits with no pod
        (RUNNING, [], "Suspended", ()),  # launched unqueued before, its gang gone (a restart): the next launch waits
        (ADMITTED_RUNNING, [w(0), w(1)], "Suspended", (0, 1)),  # was queued, the operator lost its integration
    ],
)
def test_a_queued_job_never_runs_unqueued(
    status: FineTuneJobStatus | None, workers: list[WorkerObservation], phase: str, delete: tuple[int, ...]
) -> None:
    decision = decide(job(status), workers, T0, queue=UNAVAILABLE)
    assert (decision.status.phase, decision.plan.create) == (phase, ())
    assert tuple(ref.index for ref in decision.plan.delete) == delete
    condition = find_condition(decision.status, ConditionType.ADMITTED)
    assert condition is not None and (condition.status, condition.reason) == ("False", "QueueUnavailable")
    assert decision.status.message is not None
    for part in ("spec.scheduling.queueName", "LocalQueue team-a", "--kueue off", "never runs unqueued"):
        assert part in decision.status.message
    assert [(e.type, e.reason) for e in decision.events if e.reason == "QueueUnavailable"] == [
        ("Warning", "QueueUnavailable")
    ]
    again = decide(job(decision.status), [], T0, queue=UNAVAILABLE)
    assert [e for e in again.events if e.reason == "QueueUnavailable"] == []  # said once, not each reconcile


def test_an_unqueued_job_ignores_an_operator_without_queues() -> None:
    decision = decide(job(queue=False), [], T0, queue=UNAVAILABLE)
    assert decision.plan.create == (0, 1)


@pytest.mark.parametrize(
    ("status", "suspend", "observation", "expected"),
    [
        (None, True, ADMITTED, True),  # created suspended (Kueue's convention): admission unsuspends it
        (None, True, WAITING, False),
        (None, False, ADMITTED, False),
        (RUNNING, True, ADMITTED, False),  # suspended by its user after it started: stays suspended
    ],
)
def test_unsuspend_on_admission(
    status: FineTuneJobStatus | None, suspend: bool, observation: WorkloadObservation, expected: bool
) -> None:
    assert queueing.unsuspend_on_admission(job(status, suspend=suspend), observation) is expected


def test_placed_adds_the_flavors_node_labels_and_tolerations() -> None:
    placed = queueing.placed(job(), ADMITTED)
    assert placed.spec.scheduling is not None
    assert placed.spec.scheduling.node_selector == {"pool": "cpu"}
    assert [t.key for t in placed.spec.scheduling.tolerations or []] == ["team"]
    assert queueing.placed(job(), WAITING) == job()


@pytest.mark.parametrize(
    ("observation", "workers", "expected"),
    [
        (EVICTED, [w(0)], False),  # a worker is still stopping: keep the quota until it is gone
        (EVICTED, [], True),
        (ADMITTED, [], False),
        (REQUEUED, [], False),  # already given back
        (None, [], False),
    ],
)
def test_release_admission(
    observation: WorkloadObservation | None, workers: list[WorkerObservation], expected: bool
) -> None:
    assert queueing.release_admission(observation, workers) is expected


@pytest.mark.parametrize(
    ("phase", "observation", "expected"),
    [
        ("Succeeded", ADMITTED, "Succeeded"),
        ("Failed", ADMITTED, "Failed"),
        ("Succeeded", FINISHED, None),
        ("Running", ADMITTED, None),
        ("Succeeded", None, None),
    ],
)
def test_finished_reason(phase: Any, observation: WorkloadObservation | None, expected: str | None) -> None:
    assert queueing.finished_reason(phase, observation) == expected


def test_refs_are_of_the_current_attempt() -> None:
    decision = decide(job(ADMITTED_RUNNING), [w(0), w(1)], T0, queue=EVICTED)
    assert set(decision.plan.delete) == {WorkerRef(1, 0), WorkerRef(1, 1)}


@pytest.mark.parametrize("observation", [UNAVAILABLE, WAITING], ids=["no-integration", "a-new-workload"])
def test_a_gang_launched_unqueued_before_the_rule_runs_on(
    observation: queueing.QueueingUnavailable | WorkloadObservation,
) -> None:
    """An operator upgrade (the integration detected, or found missing) does not stop a running gang that
    was never admitted; it keeps its workers and phase."""
    decision = decide(job(RUNNING), [w(0), w(1)], T0, queue=observation)
    assert decision.plan.delete == () and decision.status.phase == "Running"
