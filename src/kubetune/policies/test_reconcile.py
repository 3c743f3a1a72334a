"""The state machine, driven step by step: each row is (previous phase/attempt, observed workers) ->
(phase, plan, restarts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ProgressSnapshot, TrainerResult
from kubetune.api.status import ConditionType, FineTuneJobStatus, Metrics, Progress, Reason
from kubetune.policies.gang import WorkerRef
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import Decision, decide
from kubetune.policies.status import find_condition
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


#: The job every story starts from: a gang of two, restarted at most twice, each after a 10 s backoff.
JOB = a_job("demo").in_namespace("ns").metadata(generation=1).workers(2).retry(max_restarts=2, backoff_seconds=10)


def make_job(status: FineTuneJobStatus | None = None, **spec: Any) -> FineTuneJob:
    """JOB with `spec` merged in (wire names), and `status`."""
    return JOB.spec(spec).to_job().model_copy(update={"status": status})


def w(index: int, state: str = "running", attempt: int = 1, **kw: Any) -> WorkerObservation:
    return WorkerObservation(index=index, attempt=attempt, state=state, **kw)  # type: ignore[arg-type]


def step(job: FineTuneJob, workers: list[WorkerObservation], now: datetime = T0) -> tuple[FineTuneJob, Decision]:
    """Decide, then 'write' the status as a supervisor would."""
    decision = decide(job, workers, now)
    return job.model_copy(update={"status": decision.status}), decision


def launched(job: FineTuneJob) -> FineTuneJob:
    job, decision = step(job, [])
    assert decision.plan.create == (0, 1) and decision.status.attempt == 1
    return job


def test_a_new_job_launches_attempt_1_and_reports_pending() -> None:
    job, decision = step(make_job(), [])
    assert (decision.status.phase, decision.plan.attempt, decision.plan.create) == ("Pending", 1, (0, 1))
    assert decision.status.start_time is None and not decision.events, "nothing is created yet"
    _, decision = step(job, [w(0, "pending"), w(1, "pending")], T0 + timedelta(seconds=1))
    assert decision.status.start_time == T0 + timedelta(seconds=1)
    assert [e.reason for e in decision.events] == [Reason.GANG_CREATED]


@pytest.mark.parametrize(
    ("observed", "phase", "create"),
    [
        ([], "Pending", (0, 1)),  # crashed after writing the status: create the missing gang
        ([w(0, "pending")], "Pending", (1,)),  # crashed between two creates
        ([w(0, "pending"), w(1, "pending")], "Pending", ()),
        ([w(0), w(1, "pending")], "Pending", ()),
        ([w(0), w(1)], "Running", ()),
        ([w(0, "succeeded"), w(1)], "Running", ()),
    ],
)
def test_a_launched_gang_is_completed_and_followed(
    observed: list[WorkerObservation], phase: str, create: tuple[int, ...]
) -> None:
    _, decision = step(launched(make_job()), observed)
    assert (decision.status.phase, decision.plan.create, decision.plan.delete) == (phase, create, ())


def test_all_workers_succeeded_is_success_with_the_trainer_figures() -> None:
    result = TrainerResult(
        outcome="Succeeded",
        reason="Succeeded",
        message="done",
        retryable=False,
        step=40,
        total_steps=40,
        output_path="/out",
    )
    _, decision = step(launched(make_job()), [w(0, "succeeded", result=result, exit_code=0), w(1, "succeeded")])
    status = decision.status
    assert (status.phase, status.completion_time, status.output and status.output.path) == ("Succeeded", T0, "/out")
    assert status.progress is not None and status.progress.percent == 100
    assert find_condition(status, ConditionType.SUCCEEDED) is not None


def test_early_stop_succeeds_with_an_early_stopped_condition_and_the_trainers_reason() -> None:
    result = TrainerResult(outcome="EarlyStopped", reason="EarlyStopped", message="no gain in 3 evals", retryable=False)
    _, decision = step(launched(make_job()), [w(0, "succeeded", result=result), w(1, "succeeded")])
    early = find_condition(decision.status, ConditionType.EARLY_STOPPED)
    assert decision.status.phase == "Succeeded" and early is not None and early.message == "no gain in 3 evals"


@pytest.mark.parametrize(
    ("observed", "phase", "restarts", "reason"),
    [
        ([w(0, "failed", exit_code=137, oom_killed=True), w(1)], "Restarting", 1, Reason.OUT_OF_MEMORY),
        ([w(0, "failed", exit_code=7), w(1, "failed", exit_code=6)], "Restarting", 1, Reason.OUT_OF_MEMORY),
        (
            [w(0, "failed", exit_code=143, disrupted=True), w(1, "failed", exit_code=7)],
            "Restarting",
            0,
            Reason.DISRUPTED,
        ),
        ([w(0)], "Restarting", 0, Reason.DISRUPTED),  # worker 1 vanished from a started gang
        ([w(0, "failed", exit_code=3), w(1, "failed", exit_code=7)], "Failed", 0, Reason.DATA_ERROR),
        ([w(0, "failed", exit_code=2), w(1)], "Failed", 0, Reason.INVALID_SPEC),
    ],
)
def test_failures_of_an_attempt(observed: list[WorkerObservation], phase: str, restarts: int, reason: str) -> None:
    _, decision = step(launched(make_job()), observed)
    assert (decision.status.phase, decision.status.restarts) == (phase, restarts)
    kind = ConditionType.FAILED if phase == "Failed" else ConditionType.RESTARTING
    condition = find_condition(decision.status, kind)
    assert condition is not None and condition.reason == reason
    # Restarting or Failed: the whole gang goes (a failed job leaves no pod behind)
    assert set(decision.plan.delete) == {WorkerRef(1, o.index) for o in observed}
    assert decision.plan.create == ()


def test_restart_waits_for_the_gang_to_be_gone_and_the_backoff_then_launches_attempt_2() -> None:
    job, decision = step(launched(make_job()), [w(0, "failed", exit_code=1), w(1)])
    assert decision.counted_restart and decision.check_again_in == 10
    job, decision = step(job, [w(1, deleting=True)], T0 + timedelta(seconds=30))
    assert (decision.status.phase, decision.plan.create, decision.plan.delete) == ("Restarting", (), ())
    job, decision = step(job, [], T0 + timedelta(seconds=5))
    assert decision.plan.create == () and decision.check_again_in == 5
    job, decision = step(job, [], T0 + timedelta(seconds=10))
    assert (decision.status.phase, decision.status.attempt, decision.plan.create) == ("Pending", 2, (0, 1))
    job, decision = step(job, [w(0, attempt=2), w(1, attempt=2)], T0 + timedelta(seconds=11))
    assert decision.status.phase == "Running" and decision.status.restarts == 1
    restarting = find_condition(decision.status, ConditionType.RESTARTING)
    assert restarting is not None and restarting.status == "False"


def test_max_restarts_exhausted_fails_the_job() -> None:
    status = FineTuneJobStatus(phase="Running", attempt=3, restarts=2, start_time=T0)
    _, decision = step(make_job(status), [w(0, "failed", exit_code=1, attempt=3), w(1, attempt=3)])
    failed = find_condition(decision.status, ConditionType.FAILED)
    assert decision.status.phase == "Failed" and failed is not None and failed.reason == Reason.RESTARTS_EXHAUSTED
    assert decision.plan.delete == (WorkerRef(3, 0), WorkerRef(3, 1))  # a failed job leaves no pod behind


def test_active_deadline_fails_and_removes_every_worker() -> None:
    job, _ = step(launched(make_job(activeDeadlineSeconds=60)), [w(0, "pending"), w(1, "pending")])  # startTime
    _, decision = step(job, [w(0), w(1)], T0 + timedelta(seconds=59))
    assert decision.status.phase == "Running" and decision.check_again_in == 1
    _, decision = step(job, [w(0), w(1, "succeeded")], T0 + timedelta(seconds=60))
    failed = find_condition(decision.status, ConditionType.FAILED)
    assert failed is not None and failed.reason == Reason.DEADLINE_EXCEEDED
    assert decision.plan.delete == (WorkerRef(1, 0), WorkerRef(1, 1))


def test_suspend_removes_the_gang_and_resume_starts_the_next_attempt() -> None:
    job = launched(make_job())
    job, decision = step(job.model_copy(update={"spec": job.spec.model_copy(update={"suspend": True})}), [w(0), w(1)])
    assert decision.status.phase == "Suspended" and len(decision.plan.delete) == 2
    job, decision = step(job, [])
    assert decision.status.phase == "Suspended" and decision.events == ()
    resumed = job.model_copy(update={"spec": job.spec.model_copy(update={"suspend": False})})
    _, decision = step(resumed, [w(0, deleting=True)])
    assert decision.plan.create == ()  # the old gang is not gone yet
    _, decision = step(resumed, [])
    assert (decision.status.phase, decision.status.attempt, decision.status.restarts) == ("Pending", 2, 0)
    assert Reason.RESUMED in [e.reason for e in decision.events]


def test_a_job_created_suspended_for_kueue_stays_suspended_without_workers() -> None:
    job = make_job(suspend=True).model_copy(update={})
    _, decision = step(job, [])
    assert decision.status.phase == "Suspended" and decision.plan.create == () and decision.status.attempt == 0


def test_ttl_after_finished_deletes_the_job() -> None:
    status = FineTuneJobStatus(phase="Succeeded", attempt=1, completion_time=T0, start_time=T0)
    job = make_job(status, ttlSecondsAfterFinished=30)
    assert not decide(job, [], T0 + timedelta(seconds=29)).delete_job
    assert decide(job, [], T0 + timedelta(seconds=30)).delete_job


def test_progress_of_the_current_attempt_only_reaches_the_status() -> None:
    job = launched(make_job())
    snapshot = ProgressSnapshot(
        attempt=1, progress=Progress(step=5, total_steps=10, percent=50), metrics=Metrics(train_loss=1.5), updated_at=0
    )
    stale = snapshot.model_copy(update={"attempt": 0})
    assert decide(job, [w(0), w(1)], T0, stale).status.progress is None
    status = decide(job, [w(0), w(1)], T0, snapshot).status
    assert status.progress is not None and status.progress.percent == 50
    assert status.metrics is not None and status.metrics.train_loss == 1.5


def relaunched(how: str) -> FineTuneJob:
    """A job whose attempt 2 was just launched, after a counted restart or after a resumption."""
    job = launched(make_job())
    if how == "restart":
        job, _ = step(job, [w(0), w(1)])
        job, _ = step(job, [w(0, "failed", exit_code=1), w(1)])
        job, _ = step(job, [], T0 + timedelta(seconds=10))
    else:
        job, _ = step(job, [w(0), w(1)])
        job, _ = step(job.model_copy(update={"spec": job.spec.model_copy(update={"suspend": True})}), [w(0), w(1)])
        job, _ = step(job.model_copy(update={"spec": job.spec.model_copy(update={"suspend": False})}), [])
    assert (job.status and job.status.phase, job.status and job.status.attempt) == ("Pending", 2)
    return job


def running_condition(status: FineTuneJobStatus | None) -> tuple[str, str, str] | None:
    running = find_condition(status or FineTuneJobStatus(), ConditionType.RUNNING)
    return None if running is None else (running.status, running.reason, running.message)


@pytest.mark.parametrize(
    ("observed", "running"),
    [
        ([], None),  # attempt 1 just launched: Running never applied, so it is not listed
        ([w(0, "pending"), w(1, "pending")], None),
        ([w(0), w(1, "pending")], None),
        ([w(0), w(1)], ("True", Reason.WORKERS_RUNNING, "attempt 1: 2 worker(s) training")),
    ],
)
def test_the_first_attempt_lists_running_once_it_applies(
    observed: list[WorkerObservation], running: tuple[str, str, str] | None
) -> None:
    _, decision = step(launched(make_job()), observed)
    assert running_condition(decision.status) == running


WAITING_FOR_2 = ("False", Reason.WORKERS_PENDING, "attempt 2: waiting for 2 worker(s) to start")


@pytest.mark.parametrize("how", ["restart", "resume"])
@pytest.mark.parametrize(
    ("observed", "running"),
    [
        ([], WAITING_FOR_2),
        ([w(0, "pending", attempt=2), w(1, "pending", attempt=2)], WAITING_FOR_2),
        (
            [w(0, attempt=2), w(1, "pending", attempt=2)],
            ("False", Reason.WORKERS_PENDING, "attempt 2: waiting for 1 worker(s) to start"),
        ),
        ([w(0, attempt=2), w(1, attempt=2)], ("True", Reason.WORKERS_RUNNING, "attempt 2: 2 worker(s) training")),
    ],
)
def test_a_relaunched_gang_says_why_it_is_not_running_yet(
    how: str, observed: list[WorkerObservation], running: tuple[str, str, str]
) -> None:
    """Once the next gang is launched, Running=False names no more the last attempt's failure or the
    suspension but the workers being waited for (quietly: no event); a restart's cause stays on the
    Restarting condition until the gang runs."""
    job = relaunched(how)
    assert running_condition(job.status) == WAITING_FOR_2
    _, decision = step(job, observed)
    assert running_condition(decision.status) == running
    pending = running[0] == "False"
    assert not pending or decision.events == ()
    if how == "restart":
        restarting = find_condition(decision.status, ConditionType.RESTARTING)
        expected = Reason.WORKER_FAILED if pending else Reason.WORKERS_RUNNING
        assert restarting is not None and restarting.reason == expected
