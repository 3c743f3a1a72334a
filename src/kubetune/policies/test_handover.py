"""The whole result taken from rank 0's endpoint gives the status `kubetune run` writes from result.json."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubetune.api.outcome import ProgressSnapshot, TrainerResult
from kubetune.api.status import ConditionType, FineTuneJobStatus, Metrics, Progress, Reason
from kubetune.policies.handover import confirmable, exit_code_of, handed_over, result_waiting
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import decide
from kubetune.policies.status import find_condition, with_fields
from tests.support.builders import a_cpu_gang
from tests.support.results import largest_result

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def snapshot(attempt: int | None, ready: bool) -> ProgressSnapshot:
    return ProgressSnapshot(attempt=attempt, progress=Progress(), metrics=Metrics(), updated_at=0, result_ready=ready)


@pytest.mark.parametrize(
    ("snap", "attempt", "waiting"),
    [
        (None, 1, False),
        (snapshot(1, False), 1, False),
        (snapshot(1, True), 1, True),
        (snapshot(None, True), 2, True),  # a trainer run by hand states no attempt
        (snapshot(1, True), 2, False),  # an older attempt's rank 0 says nothing about this one
    ],
)
def test_result_waiting(snap: ProgressSnapshot | None, attempt: int, waiting: bool) -> None:
    assert result_waiting(snap, attempt) is waiting


def result(outcome: str, reason: str) -> TrainerResult:
    return TrainerResult(outcome=outcome, reason=reason, message="m", retryable=False)


@pytest.mark.parametrize(
    ("outcome", "reason", "code"),
    [
        ("Succeeded", "Succeeded", 0),
        ("EarlyStopped", "EarlyStopped", 0),
        ("Failed", "DataError", 3),
        ("Failed", "NonFiniteLoss", 5),
        ("Interrupted", "Interrupted", 8),
        ("Failed", "Error", 1),
    ],
)
def test_exit_code_of_a_result_is_the_trainers(outcome: str, reason: str, code: int) -> None:
    assert exit_code_of(result(outcome, reason)) == code


@pytest.mark.parametrize(
    ("phase", "confirm"),
    [
        ("Pending", False),
        ("Running", False),
        ("Succeeded", True),
        ("Failed", True),
        ("Restarting", True),
        ("Suspended", True),
    ],
)
def test_confirmable_once_the_status_no_longer_follows_the_attempt(phase: str, confirm: bool) -> None:
    assert confirmable(FineTuneJobStatus(phase=phase)) is confirm


def test_handed_over_ends_worker_0_and_after_success_the_workers_waiting_for_it() -> None:
    workers = [
        WorkerObservation(0, 1, "running"),
        WorkerObservation(1, 1, "running"),  # in torchrun's exit barrier, waiting for node 0
        WorkerObservation(2, 1, "failed", exit_code=7),
        WorkerObservation(0, 0, "running"),  # another attempt's
    ]
    failed = handed_over(workers, 1, result("Failed", "DataError"))
    assert (failed[0].state, failed[0].exit_code) == ("failed", 3) and failed[1:] == workers[1:]
    done = handed_over(workers, 1, largest_result())
    assert (done[0].state, done[0].exit_code, done[0].result) == ("succeeded", 0, largest_result())
    assert (done[1].state, done[1].exit_code, done[1].result) == ("succeeded", 0, None)
    assert done[2:] == workers[2:]


def test_the_largest_result_handed_over_gives_the_status_a_local_run_gives() -> None:
    """In a cluster worker 0 runs until the operator has its result; locally its process has exited with
    result.json. The decision must write the same status from both."""
    job = a_cpu_gang().to_job()
    running = with_fields(FineTuneJobStatus(), phase="Running", attempt=1, start_time=NOW)
    job = job.model_copy(update={"status": running})
    whole = largest_result()
    local = [WorkerObservation(0, 1, "succeeded", exit_code=0, result=whole), WorkerObservation(1, 1, "succeeded", 0)]
    cluster = handed_over([WorkerObservation(0, 1, "running"), WorkerObservation(1, 1, "running")], 1, whole)
    in_cluster, on_machine = decide(job, cluster, NOW), decide(job, local, NOW)
    assert in_cluster.status == on_machine.status and in_cluster.events == on_machine.events
    status = in_cluster.status
    assert status.phase == "Succeeded" and status.evaluation == whole.evaluation
    assert find_condition(status, ConditionType.RESULT_INCOMPLETE) is None
    assert find_condition(status, ConditionType.OVERFITTING_SUSPECTED).message == whole.fit[0].message  # type: ignore[union-attr]
    assert confirmable(status) and not in_cluster.plan.delete


def test_a_shortened_result_says_where_the_whole_one_is() -> None:
    job = a_cpu_gang().to_job()
    job = job.model_copy(update={"status": with_fields(FineTuneJobStatus(), phase="Running", attempt=1)})
    short = TrainerResult.model_validate_json(
        largest_result().termination_message("pvc://ckpt/demo/output/result.json")
    )
    workers = [WorkerObservation(0, 1, "succeeded", 0, result=short), WorkerObservation(1, 1, "succeeded", 0)]
    status = decide(job, workers, NOW).status
    condition = find_condition(status, ConditionType.RESULT_INCOMPLETE)
    assert status.phase == "Succeeded" and condition is not None and condition.status == "True"
    assert condition.reason == Reason.RESULT_NOT_HANDED_OVER
    assert "pvc://ckpt/demo/output/result.json" in condition.message and "4096 bytes" in condition.message
