"""Whether a failed attempt is worth restarting, and how long to wait first.

A gang fails as a whole: one worker's failure makes the others' work useless, so the supervisor
restarts every worker from the last checkpoint. Not every failure deserves that: a wrong config or a
malformed dataset fails the same way every time (permanent), while an OOM kill, a lost peer or a crash
may not (retryable). Failures caused from outside the job (preemption, eviction, node drain or loss)
are retried without counting against `retryPolicy.maxRestarts`, as Kubernetes Jobs' pod failure
policy does for the DisruptionTarget condition.

| observed                                   | kind       | reason (kubetune.api.status.Reason) |
|--------------------------------------------|------------|-------------------------------------|
| disrupted (DisruptionTarget), vanished     | disruption | Disrupted                           |
| preempted (DisruptionTarget by the scheduler) | disruption | Preempted                        |
| result.retryable false / exit 2, 3, 4      | permanent  | InvalidSpec, DataError, ModelError  |
| exit 5 (NaN loss)                          | permanent  | NonFiniteLoss (retryable with restartOnNonFiniteLoss) |
| OOMKilled, exit 6                          | retryable  | OutOfMemory (message suggests memory) |
| exit 7 (peer lost)                         | retryable  | PeerLost                            |
| exit 9 (checkpoint unreadable: I/O)        | retryable  | CheckpointUnreadable                |
| exit 10 (superseded: a newer attempt or job holds the checkpoint folder) | permanent | Superseded |
| exit 11 (hung: the gang stopped moving, kubetune.policies.hang) | retryable | Hung              |
| exit 8, 1, signal (>= 128), unknown        | retryable  | WorkerFailed                        |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from kubetune.api.operations import RetryPolicySpec
from kubetune.api.outcome import ExitReason
from kubetune.api.status import Reason
from kubetune.policies.observed import WorkerObservation

#: Longest wait between attempts, in seconds (the API documents "capped at 10 minutes").
MAX_BACKOFF_SECONDS = 600.0

#: The condition/event reason for each trainer exit reason.
REASON_OF_EXIT: dict[ExitReason, str] = {
    ExitReason.INVALID_CONFIG: Reason.INVALID_SPEC,
    ExitReason.DATA_ERROR: Reason.DATA_ERROR,
    ExitReason.MODEL_ERROR: Reason.MODEL_ERROR,
    ExitReason.NON_FINITE_LOSS: Reason.NON_FINITE_LOSS,
    ExitReason.OUT_OF_MEMORY: Reason.OUT_OF_MEMORY,
    ExitReason.PEER_LOST: Reason.PEER_LOST,
    ExitReason.INTERRUPTED: Reason.WORKER_FAILED,
    ExitReason.CHECKPOINT_UNREADABLE: Reason.CHECKPOINT_UNREADABLE,
    ExitReason.SUPERSEDED: Reason.SUPERSEDED,
    ExitReason.HUNG: Reason.HUNG,
}

#: Reasons that are usually consequences of another worker's failure; a root cause is preferred.
#: Failures that are the consequence of another worker's (a peer it lost), never a cause of their own.
CONSEQUENTIAL_REASONS = frozenset({Reason.PEER_LOST})


class FailureKind(Enum):
    """What a failure means for the job."""

    RETRYABLE = "Retryable"
    """Restart the gang from the last checkpoint; counts against maxRestarts."""
    DISRUPTION = "Disruption"
    """Restart the gang; does not count against maxRestarts."""
    PERMANENT = "Permanent"
    """Fail the job now: restarting would fail the same way."""


@dataclass(frozen=True)
class FailureVerdict:
    """The classification of a failed worker (or of a whole attempt: its root cause)."""

    kind: FailureKind
    reason: str
    """A kubetune.api.status.Reason constant."""
    message: str
    """One sentence for the status and the event, naming the worker."""
    worker: int | None = None
    """Index of the worker the verdict is about; None for the gang as a whole."""


def _memory_hint(memory_limit: str | None) -> str:
    limit = f" (limit {memory_limit})" if memory_limit else ""
    return (
        f"it ran out of memory{limit}: raise `resources.limits.memory` or lower "
        "`hyperparameters.microBatchSize` / use a higher `distributed.zeroStage`"
    )


def _from_result(worker: WorkerObservation, policy: RetryPolicySpec) -> FailureVerdict | None:
    result = worker.result
    if result is None or result.outcome in ("Succeeded", "EarlyStopped"):
        return None
    exit_reason = ExitReason.from_wire(result.reason)
    reason = REASON_OF_EXIT.get(exit_reason, Reason.WORKER_FAILED) if exit_reason else Reason.WORKER_FAILED
    retryable = result.retryable or (exit_reason is ExitReason.NON_FINITE_LOSS and policy.restart_on_non_finite_loss)
    kind = FailureKind.RETRYABLE if retryable else FailureKind.PERMANENT
    return FailureVerdict(kind, reason, f"worker {worker.index}: {result.reason}: {result.message}", worker.index)


def _from_exit(worker: WorkerObservation, policy: RetryPolicySpec, memory_limit: str | None) -> FailureVerdict:
    code, signal = worker.exit_code, worker.killed_by_signal
    name = f"worker {worker.index}"
    if worker.oom_killed:
        return FailureVerdict(
            FailureKind.RETRYABLE,
            Reason.OUT_OF_MEMORY,
            f"{name} was OOMKilled: {_memory_hint(memory_limit)}",
            worker.index,
        )
    if signal is not None:
        how = f"was killed by signal {signal} (exit {code})" if code is not None else f"was killed by signal {signal}"
        hint = f"; {_memory_hint(memory_limit)}?" if signal == 9 else ""
        return FailureVerdict(FailureKind.RETRYABLE, Reason.WORKER_FAILED, f"{name} {how}{hint}", worker.index)
    exit_reason = ExitReason.from_exit_code(code) if code is not None else None
    detail = f": {worker.message}" if worker.message else ""
    if exit_reason is None:
        text = f"{name} exited with code {code}{detail}" if code is not None else f"{name} failed{detail}"
        return FailureVerdict(FailureKind.RETRYABLE, Reason.WORKER_FAILED, text, worker.index)
    retryable = exit_reason.retryable or (
        exit_reason is ExitReason.NON_FINITE_LOSS and policy.restart_on_non_finite_loss
    )
    text = f"{name} exited with code {code} ({exit_reason.wire_name}){detail}"
    if exit_reason is ExitReason.OUT_OF_MEMORY:
        text += f": {_memory_hint(memory_limit)}"
    kind = FailureKind.RETRYABLE if retryable else FailureKind.PERMANENT
    return FailureVerdict(kind, REASON_OF_EXIT[exit_reason], text, worker.index)


def classify_worker(
    worker: WorkerObservation, policy: RetryPolicySpec, memory_limit: str | None = None
) -> FailureVerdict | None:
    """The verdict on one worker; None unless it failed or was disrupted.

    `memory_limit` (e.g. "16Gi") only enriches the OOM hint.
    """
    if worker.disrupted:
        why = worker.disruption_message or "preempted, evicted or its node went away"
        reason, what = (Reason.PREEMPTED, "preempted") if worker.preempted else (Reason.DISRUPTED, "disrupted")
        return FailureVerdict(FailureKind.DISRUPTION, reason, f"worker {worker.index} was {what}: {why}", worker.index)
    if worker.state != "failed":
        return None
    if worker.oom_killed:
        return _from_exit(worker, policy, memory_limit)
    return _from_result(worker, policy) or _from_exit(worker, policy, memory_limit)


def _priority(verdict: FailureVerdict) -> int:
    """Lower wins: permanent failures decide the job; a disruption explains its peers' failures; a
    specific cause (OOM) explains a peer-lost failure."""
    if verdict.kind is FailureKind.PERMANENT:
        return 0
    if verdict.kind is FailureKind.DISRUPTION:
        return 1
    return 3 if verdict.reason in CONSEQUENTIAL_REASONS else 2


def root_cause(verdicts: Sequence[FailureVerdict]) -> FailureVerdict | None:
    """The one verdict that decides what happens to the attempt (ties: the lowest worker index)."""
    if not verdicts:
        return None
    return min(verdicts, key=lambda v: (_priority(v), v.worker if v.worker is not None else -1))


def backoff_seconds(policy: RetryPolicySpec, restarts: int) -> float:
    """Wait before the next attempt, in seconds: `backoffSeconds` before the first restart, doubling on
    each further one, capped at 10 minutes. `restarts` is the count after this failure was counted
    (disruptions do not count, so they wait as long as the last counted restart did)."""
    exponent = max(restarts - 1, 0)
    if exponent >= 32:  # 2**32 seconds is far beyond the cap
        return MAX_BACKOFF_SECONDS
    return min(MAX_BACKOFF_SECONDS, float(policy.backoff_seconds) * float(2**exponent))


def restarts_left(policy: RetryPolicySpec, restarts: int) -> bool:
    """Whether another counted restart is allowed after `restarts` counted ones."""
    return restarts < policy.max_restarts
