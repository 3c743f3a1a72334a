"""What the gang of workers should be: which workers to start and which to remove.

A distributed run only works as a whole gang of one attempt: the workers of attempt N rendezvous with
each other, never with a survivor of attempt N-1. So the rules are strict:

- workers of any other attempt than the current one are removed;
- a new attempt is started only when no worker of an older one is left (confirmed gone, not merely
  being deleted), so two gangs never share a rendezvous address or a checkpoint directory;
- a worker missing from the current attempt is (re)started only while the gang has not started (no
  worker ran yet). Once it has, a missing worker means the gang is broken (`gang_broken`), and the
  supervisor restarts the whole gang.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubetune.policies.observed import WorkerObservation, missing_indexes, of_attempt


@dataclass(frozen=True)
class WorkerRef:
    """Names one worker: (attempt, index)."""

    attempt: int
    index: int


@dataclass(frozen=True)
class GangPlan:
    """What to do to the workers now. Creating is only ever asked for the plan's `attempt`."""

    attempt: int
    """The attempt the workers to create belong to (0: none yet)."""
    create: tuple[int, ...] = ()
    """Worker indexes to start for `attempt`."""
    delete: tuple[WorkerRef, ...] = ()
    """Workers to remove (any attempt). Workers already being removed are not listed again."""
    force_delete: tuple[WorkerRef, ...] = ()
    """Workers to remove without waiting for their end to be confirmed (their machine is lost; see
    node_loss.py); may list workers already being removed."""


def _refs(workers: Sequence[WorkerObservation]) -> tuple[WorkerRef, ...]:
    return tuple(
        WorkerRef(w.attempt, w.index) for w in sorted(workers, key=lambda w: (w.attempt, w.index)) if not w.deleting
    )


def remove_all(workers: Sequence[WorkerObservation], attempt: int) -> GangPlan:
    """Remove every worker (suspension, failure, deadline)."""
    return GangPlan(attempt=attempt, delete=_refs(workers))


def remove_unfinished(workers: Sequence[WorkerObservation], attempt: int) -> GangPlan:
    """Remove workers that still run or wait; keep terminated ones (their logs) once the job is over."""
    return GangPlan(attempt=attempt, delete=_refs([w for w in workers if not w.terminated]))


def all_gone(workers: Sequence[WorkerObservation]) -> bool:
    """No worker is left, not even one being deleted: the next attempt may start."""
    return not workers


def launch(workers: Sequence[WorkerObservation], attempt: int, size: int) -> GangPlan:
    """Start every worker of a new attempt; only valid when `all_gone` (otherwise the leftovers are
    removed and nothing is started)."""
    if not all_gone(workers):
        return remove_all(workers, attempt - 1)
    return GangPlan(attempt=attempt, create=tuple(range(size)))


def gang_started(workers: Sequence[WorkerObservation], attempt: int) -> bool:
    """Some worker of the attempt has run (it runs or has terminated)."""
    return any(w.state != "pending" for w in of_attempt(workers, attempt))


def gang_broken(workers: Sequence[WorkerObservation], attempt: int, size: int) -> list[int]:
    """Workers of a started attempt that vanished or are being removed by someone else: the gang
    cannot finish, it must restart as a whole. Empty when the gang is intact or has not started."""
    if not gang_started(workers, attempt):
        return []
    deleting = [w.index for w in of_attempt(workers, attempt) if w.deleting and not w.terminated]
    return sorted(set(missing_indexes(workers, attempt, size)) | set(deleting))


def keep(workers: Sequence[WorkerObservation], attempt: int, size: int) -> GangPlan:
    """Hold the current attempt: remove other attempts' workers, and start missing workers of a gang
    that has not started yet (e.g. after a crash of the supervisor between creating two workers) once
    no other attempt's worker is left."""
    stale = [w for w in workers if w.attempt != attempt]
    startable = not stale and not gang_started(workers, attempt)
    create = tuple(missing_indexes(workers, attempt, size)) if startable else ()
    return GangPlan(attempt=attempt, create=create, delete=_refs(stale))
