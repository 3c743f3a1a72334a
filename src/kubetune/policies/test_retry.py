"""The retry policy's table: observed worker -> (kind, reason)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.operations import RetryPolicySpec
from kubetune.api.outcome import TrainerResult
from kubetune.api.status import Reason
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.retry import (
    FailureKind,
    FailureVerdict,
    backoff_seconds,
    classify_worker,
    restarts_left,
    root_cause,
)

pytestmark = pytest.mark.timeout(10)

R, D, P = FailureKind.RETRYABLE, FailureKind.DISRUPTION, FailureKind.PERMANENT


def failed(**kw: Any) -> WorkerObservation:
    return WorkerObservation(index=1, attempt=1, state="failed", **kw)


def result(reason: str, retryable: bool) -> TrainerResult:
    return TrainerResult(outcome="Failed", reason=reason, message=f"{reason} at step 3", retryable=retryable)


@pytest.mark.parametrize(
    ("worker", "kind", "reason"),
    [
        (failed(exit_code=137, oom_killed=True), R, Reason.OUT_OF_MEMORY),
        (failed(exit_code=137), R, Reason.WORKER_FAILED),
        (failed(signal=9), R, Reason.WORKER_FAILED),
        (failed(exit_code=1), R, Reason.WORKER_FAILED),
        (failed(exit_code=6), R, Reason.OUT_OF_MEMORY),
        (failed(exit_code=7), R, Reason.PEER_LOST),
        (failed(exit_code=8), R, Reason.WORKER_FAILED),
        (failed(exit_code=9), R, Reason.CHECKPOINT_UNREADABLE),
        (failed(exit_code=9, result=result("CheckpointUnreadable", True)), R, Reason.CHECKPOINT_UNREADABLE),
        (failed(exit_code=10), P, Reason.SUPERSEDED),
        (failed(exit_code=10, result=result("Superseded", False)), P, Reason.SUPERSEDED),
        (failed(exit_code=2), P, Reason.INVALID_SPEC),
        (failed(exit_code=3), P, Reason.DATA_ERROR),
        (failed(exit_code=4), P, Reason.MODEL_ERROR),
        (failed(exit_code=5), P, Reason.NON_FINITE_LOSS),
        (failed(exit_code=3, result=result("DataError", False)), P, Reason.DATA_ERROR),
        (failed(exit_code=1, result=result("PeerLost", True)), R, Reason.PEER_LOST),
        (failed(exit_code=143, disrupted=True), D, Reason.DISRUPTED),
        (failed(exit_code=143, disrupted=True, preempted=True), D, Reason.PREEMPTED),
        (WorkerObservation(index=1, attempt=1, state="running", disrupted=True), D, Reason.DISRUPTED),
        (failed(exit_code=None), R, Reason.WORKER_FAILED),
    ],
)
def test_classify_worker(worker: WorkerObservation, kind: FailureKind, reason: str) -> None:
    verdict = classify_worker(worker, RetryPolicySpec(), memory_limit="16Gi")
    assert verdict is not None and (verdict.kind, verdict.reason) == (kind, reason)
    assert "worker 1" in verdict.message


def test_oom_message_suggests_memory() -> None:
    verdict = classify_worker(failed(exit_code=137, oom_killed=True), RetryPolicySpec(), memory_limit="16Gi")
    assert verdict is not None and "16Gi" in verdict.message and "resources.limits.memory" in verdict.message


def test_non_finite_loss_is_retryable_when_asked() -> None:
    verdict = classify_worker(failed(exit_code=5), RetryPolicySpec(restart_on_non_finite_loss=True))
    assert verdict is not None and verdict.kind is R


@pytest.mark.parametrize("state", ["pending", "running", "succeeded"])
def test_healthy_workers_have_no_verdict(state: Any) -> None:
    assert classify_worker(WorkerObservation(index=0, attempt=1, state=state), RetryPolicySpec()) is None


@pytest.mark.parametrize(
    ("verdicts", "winner"),
    [
        (
            [FailureVerdict(R, Reason.PEER_LOST, "", 0), FailureVerdict(R, Reason.OUT_OF_MEMORY, "", 1)],
            Reason.OUT_OF_MEMORY,
        ),
        (
            [FailureVerdict(R, Reason.OUT_OF_MEMORY, "", 0), FailureVerdict(D, Reason.DISRUPTED, "", 1)],
            Reason.DISRUPTED,
        ),
        ([FailureVerdict(D, Reason.DISRUPTED, "", 0), FailureVerdict(P, Reason.DATA_ERROR, "", 1)], Reason.DATA_ERROR),
        (
            [FailureVerdict(R, Reason.WORKER_FAILED, "a", 1), FailureVerdict(R, Reason.OUT_OF_MEMORY, "b", 0)],
            Reason.OUT_OF_MEMORY,
        ),
    ],
)
def test_root_cause(verdicts: list[FailureVerdict], winner: str) -> None:
    chosen = root_cause(verdicts)
    assert chosen is not None and chosen.reason == winner


@pytest.mark.parametrize(
    ("backoff", "restarts", "seconds"),
    [(10, 0, 10), (10, 1, 10), (10, 2, 20), (10, 3, 40), (10, 7, 600), (10, 1000, 600), (0, 5, 0), (3600, 1, 600)],
)
def test_backoff_doubles_and_is_capped(backoff: int, restarts: int, seconds: float) -> None:
    assert backoff_seconds(RetryPolicySpec(backoff_seconds=backoff), restarts) == seconds


@pytest.mark.parametrize(("max_restarts", "restarts", "left"), [(0, 0, False), (3, 2, True), (3, 3, False)])
def test_restarts_left(max_restarts: int, restarts: int, left: bool) -> None:
    assert restarts_left(RetryPolicySpec(max_restarts=max_restarts), restarts) is left
