"""What a supervisor saw of one worker, in words that are not Kubernetes-specific.

Every policy decides from these observations alone. The operator derives them from pods (container
state, termination message, pod conditions); the local runner derives them from the processes it
supervises (return code, `result.json`). Keeping this shape free of Kubernetes types is what lets both
supervisors share one set of decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import ValidationError

from kubetune.api.outcome import TrainerResult

WorkerState = Literal["pending", "running", "succeeded", "failed"]
"""pending: not yet running (being scheduled, pulling its image, starting); running: the trainer runs;
succeeded: it exited 0; failed: it exited non-zero or was killed."""

#: Exit codes from 128 on mean "killed by signal (code - 128)", as shells and Kubernetes report them.
SIGNAL_EXIT_BASE = 128


@dataclass(frozen=True)
class WorkerObservation:
    """One worker (a pod, or a local process group) of one attempt, as last observed."""

    index: int
    """Worker index in the gang, 0-based; worker 0 hosts rank 0."""
    attempt: int
    """The gang attempt this worker belongs to (1-based)."""
    state: WorkerState
    exit_code: int | None = None
    """The trainer's exit code once terminated; None while it runs or when unknown."""
    signal: int | None = None
    """Signal number that killed it, when known directly (a local process); see `killed_by_signal`."""
    result: TrainerResult | None = None
    """The trainer's own report (termination message / result.json), when it wrote one."""
    message: str | None = None
    """Free text about the termination when there is no TrainerResult (e.g. a raw termination message)."""
    oom_killed: bool = False
    """The kernel's OOM killer ended it (Kubernetes reason OOMKilled)."""
    disrupted: bool = False
    """It was removed by something outside the job: preemption, eviction, node drain or node loss
    (Kubernetes' DisruptionTarget condition). Such failures do not count against maxRestarts."""
    disruption_message: str | None = None
    preempted: bool = False
    """The disruption made room for a higher-priority workload (Kubernetes: DisruptionTarget with reason
    PreemptionByScheduler); the next attempt waits for that capacity without a scheduling deadline."""
    waiting_reason: str | None = None
    """Why a pending worker waits, e.g. ErrImagePull, ImagePullBackOff, CreateContainerConfigError."""
    waiting_message: str | None = None
    waiting_since: datetime | None = None
    """Since when it has been waiting to start (in Kubernetes: since it was scheduled or created)."""
    unschedulable_since: datetime | None = None
    """Since when the scheduler has found no place for it; None when scheduled or not known."""
    unschedulable_message: str | None = None
    volume_held_elsewhere: str | None = None
    """A pending worker waits for a volume still attached to another machine (Kubernetes: the attach-detach
    controller's Multi-Attach error); its words. None when not so, or not looked up (see
    kubetune.policies.deadlines.attach_worth_looking_up)."""
    deleting: bool = False
    """Its removal has begun (a pod with a deletionTimestamp, a process sent SIGTERM)."""
    finished_at: datetime | None = None
    """When it terminated, where known."""
    node: str | None = None
    """The machine it runs on (a Kubernetes node name); None when not placed or not known."""
    node_lost_since: datetime | None = None
    """Since when its machine has stopped reporting (a Node whose Ready condition is not True); None while
    the machine is healthy or where machines cannot be lost (the local runner)."""

    @property
    def killed_by_signal(self) -> int | None:
        """The signal that ended the worker, from `signal` or an exit code of 128 + N."""
        if self.signal is not None:
            return self.signal
        if self.exit_code is not None and self.exit_code >= SIGNAL_EXIT_BASE:
            return self.exit_code - SIGNAL_EXIT_BASE
        return None

    @property
    def terminated(self) -> bool:
        return self.state in ("succeeded", "failed")


def parse_termination_message(text: str | None) -> TrainerResult | None:
    """The TrainerResult in a termination message or result.json; None when it holds something else
    (an empty file, a stack trace written by a crashed process, a truncated line)."""
    if not text or not text.strip():
        return None
    try:
        return TrainerResult.model_validate_json(text.strip())
    except ValidationError:
        return None


def of_attempt(workers: Iterable[WorkerObservation], attempt: int) -> list[WorkerObservation]:
    """The workers of one attempt, ordered by index."""
    return sorted((w for w in workers if w.attempt == attempt), key=lambda w: w.index)


def missing_indexes(workers: Sequence[WorkerObservation], attempt: int, size: int) -> list[int]:
    """Indexes 0..size-1 with no observed worker of `attempt`."""
    present = {w.index for w in workers if w.attempt == attempt}
    return [index for index in range(size) if index not in present]
