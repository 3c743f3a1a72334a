"""How often rank 0's progress is read, and when what was read is worth a status write.

Why a policy of its own: at 1,000 training jobs, reading every rank 0 on every reconcile and writing
every step that advanced is about 200 status writes a second, the whole API write budget, and a job
whose figures do not change still costs a read and a reconcile every few seconds. The operator reads
progress outside its reconcile workers (kubetune.operator.progress_poller) on the cadence decided here:

- progress that changed is read again after `write_interval` and written at most once per
  `write_interval` per job (a reconcile is asked for when the last one asked is that old);
- progress that did not change is read less and less often, up to `unchanged_read_max` (a job in a long
  evaluation or a stuck one costs one read a minute, no reconcile, no write);
- reads that fail back off (2, 4, ... up to `failing_read_max` seconds): a rank 0 that is unreachable or
  answers badly costs one read every 30 s at most; one unreachable for less than `unreachable_after` (a
  trainer still starting, a rank 0 busy at the end of its run) every 4 s at most. The job's status hears of it when it matters: an
  answer refused (at once), a rank 0 unreachable for `unreachable_after` seconds (ProgressUnavailable,
  kubetune.policies.progress_reach), and the first answer after failing (the condition cleared);
- a rank 0 that says its result waits (`resultReady`) or that belongs to another attempt is told to the
  reconcile at once: a run's end is never held back by the write cadence.

Pure: a function of what was remembered about a pod's reads, how the latest read went, and the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kubetune.api.status import FineTuneJobStatus

#: Longest pause between two reads of a rank 0 unreachable for less than the bound: a trainer's port opens
#: once torch is imported and the rendezvous done, and a rank 0 busy exporting may time out while its whole
#: result waits (for `result_handover_seconds` only): either is read again within seconds.
RECENTLY_FAILING_READ_MAX = 4.0

#: How a read of rank 0 went: a snapshot, an answer refused (too large, not the protocol), the pod could
#: not be reached (refused, reset, timed out).
ReadKind = Literal["snapshot", "refused", "unreachable"]


@dataclass(frozen=True)
class Cadence:
    """The read and write cadence of progress. Seconds."""

    write_interval: float = 15.0
    """Shortest time between two progress writes of one job, and the read interval while progress
    changes. Progress in the status is at most about this much (plus a read's and a reconcile's time)
    behind rank 0."""
    unchanged_read_max: float = 60.0
    """Longest pause between two reads while progress does not change (it doubles up to this)."""
    failing_read_max: float = 30.0
    """Longest pause between two reads while they fail (2, 4, ... up to this)."""
    unreachable_after: float = 60.0
    """Seconds reads must fail at the connection before the status says ProgressUnavailable."""

    def __post_init__(self) -> None:
        for name in ("write_interval", "unchanged_read_max", "failing_read_max", "unreachable_after"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, not {getattr(self, name)}")
        if self.unchanged_read_max < self.write_interval:
            raise ValueError("unchanged_read_max must be >= write_interval")


@dataclass(frozen=True)
class ReadOutcome:
    """One read of rank 0, as the cadence needs it."""

    kind: ReadKind
    fingerprint: str = ""
    """What the snapshot says, in a form that compares equal when nothing changed (its timestamp left out);
    empty when rank 0 answered without one (still starting)."""
    urgent: bool = False
    """The reconcile must hear of it at once: the result waits, or the snapshot is of another attempt."""


@dataclass(frozen=True)
class ReadMemory:
    """What is remembered about the reads of one pod (monotonic seconds)."""

    fingerprint: str | None = None
    """Of the last snapshot read; None before the first."""
    pause: float = 0.0
    """The pause chosen after the last read."""
    strikes: int = 0
    """Bad reads (refused or unreachable) in a row."""
    failing_since: float | None = None
    """When reads began failing at the connection; None while rank 0 answers."""
    asked_at: float | None = None
    """When a reconcile was last asked for because progress changed."""
    read_at: float | None = None
    """When the last read ended."""


@dataclass(frozen=True)
class NextSteps:
    """After a read: what to remember, when to read again, when (if at all) to reconcile."""

    memory: ReadMemory
    read_in: float
    reconcile_in: float | None


def after_read(memory: ReadMemory, read: ReadOutcome, now: float, cadence: Cadence) -> NextSteps:
    """The cadence after `read` of a pod whose earlier reads left `memory`."""
    if read.kind == "snapshot":
        return _after_snapshot(memory, read, now, cadence)
    strikes = memory.strikes + 1
    failing_for = now - memory.failing_since if memory.failing_since is not None else 0.0
    # unreachable, and not for long: a trainer still starting, or one busy at the end of its run with its
    # result waiting (past the bound, one that will not answer soon)
    lately = read.kind == "unreachable" and failing_for < cadence.unreachable_after
    read_in = min(RECENTLY_FAILING_READ_MAX if lately else cadence.failing_read_max, 2.0**strikes)
    if read.kind == "refused":  # the status says so at once, the first time (or after unreachable reads)
        remembered = ReadMemory(memory.fingerprint, read_in, strikes, None, memory.asked_at, now)
        return NextSteps(remembered, read_in, 0.0 if memory.strikes == 0 or memory.failing_since is not None else None)
    since = memory.failing_since if memory.failing_since is not None else now
    remembered = ReadMemory(memory.fingerprint, read_in, strikes, since, memory.asked_at, now)
    if memory.failing_since is None:  # it just began failing: the status is told once the bound has passed
        return NextSteps(remembered, read_in, cadence.unreachable_after)
    # Told again when the bound passed since the last read (the timer set at the first failure can have
    # been replaced by an earlier one, which a work queue keeps instead).
    crossed = since + cadence.unreachable_after
    last = memory.read_at if memory.read_at is not None else now
    return NextSteps(remembered, read_in, 0.0 if last < crossed <= now else None)


def _after_snapshot(memory: ReadMemory, read: ReadOutcome, now: float, cadence: Cadence) -> NextSteps:
    recovered = memory.strikes > 0  # the status may say ProgressUnavailable or a refused answer: clear it
    changed = read.fingerprint != memory.fingerprint
    if changed or not read.fingerprint:  # (an answer without a snapshot: a trainer still starting)
        read_in = cadence.write_interval
    else:
        read_in = min(cadence.unchanged_read_max, max(memory.pause, cadence.write_interval) * 2)
    if read.urgent or recovered:
        reconcile_in: float | None = 0.0
    elif changed:
        reconcile_in = 0.0 if memory.asked_at is None else max(0.0, memory.asked_at + cadence.write_interval - now)
    else:
        reconcile_in = None
    asked_at = now + reconcile_in if reconcile_in is not None else memory.asked_at
    return NextSteps(ReadMemory(read.fingerprint, read_in, 0, None, asked_at, now), read_in, reconcile_in)


def progress_only(previous: FineTuneJobStatus, status: FineTuneJobStatus) -> bool:
    """Whether `status` differs from `previous` only in rank 0's figures (progress, metrics): such a write
    is low priority (it waits behind creates and restarts for the API write budget)."""
    blank = {"progress": None, "metrics": None}
    return status != previous and status.model_copy(update=blank) == previous.model_copy(update=blank)
