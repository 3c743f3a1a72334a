"""A hung gang: every rank waiting on one that stopped, or on a collective that never completes.

A rank whose process is stopped (SIGSTOP, a frozen cgroup, a kernel stuck in D state) or a collective
that waits forever never raises, never exits and never writes a result: the exit-code policies see
Running for ever, while every GPU of the gang is paid for and idle. The trainer therefore watches itself
(kubetune.trainer.hang_watch): each rank posts a beat to the gang's rendezvous store every few seconds
from a thread of its own, and two judges (ranks 0 and 1) read every beat and apply `verdict` here.

A beat carries two counters, so that no two machines' clocks are ever compared (a judge times changes
on its own monotonic clock):

- `alive` grows with every beat: the rank's process runs. A rank whose `alive` stops growing is stopped
  or gone, whatever it was doing.
- `moves` grows with every forward pass of the model and every optimizer step: its training moves. When
  no rank's `moves` grows, the whole gang waits: on a stopped rank, or on a collective that never ends.

| seen by a judge, for at least the hang timeout                  | verdict                              |
|------------------------------------------------------------------|--------------------------------------|
| a rank's `alive` unchanged (any phase)                           | Hung: that rank stopped reporting    |
| every rank armed (one step done), none paused, no `moves` change | Hung: every rank alive, none moves   |
| ... while a rank is paused (a checkpoint write or read, the export: | Hung only after PAUSED_MULTIPLE      |
| one long call each, on a shared disk that may be slow)            | times the timeout                    |
| any rank finished (it left, on purpose)                          | nothing                              |

The hang timeout is `retryPolicy.hangTimeoutSeconds`, or, by default, ten times the longest optimizer
step seen so far and at least five minutes: a step can legitimately take seconds on a GPU and a minute on
a CPU, and a first evaluation with generation is many forward passes, each one a move. The judge that
declares the hang is the lowest judge still alive, so exactly one rank reports it; the others are ended
by the supervisor with the gang, which restarts from the last checkpoint (the reason `Hung` is
retryable and counts against maxRestarts like any other failure).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

#: Seconds: the default hang timeout is never shorter (a model's first evaluation, a slow shared disk).
FLOOR_SECONDS = 300.0
#: The default hang timeout is this many times the longest optimizer step seen so far.
STEP_MULTIPLE = 10.0
#: A checkpoint write or the export is one long call without forward passes: its stillness is judged
#: against this many times the timeout (30 min at the default floor, torch's collective timeout here), so
#: a shared disk that stopped answering still ends the attempt, and a slow one does not.
PAUSED_MULTIPLE = 6.0
#: The ranks that read every beat and may declare a hang: two, so that a stopped rank 0 is still caught,
#: and only two, so that the rendezvous store serves 2 x world reads per beat, not world x world.
JUDGES = (0, 1)


@dataclass(frozen=True)
class RankBeat:
    """What one rank posts each beat."""

    rank: int
    alive: int
    """Beats posted so far by this rank's watch thread."""
    moves: int
    """Forward passes and optimizer steps of this rank's training so far."""
    step: int
    """Optimizer steps done (the step being worked on is step + 1)."""
    armed: bool = False
    """One optimizer step of this attempt is done: from now on the gang should keep moving."""
    paused: str | None = None
    """What the rank is doing that is one long call (`checkpointing`, `exporting`); None otherwise."""
    longest_step_seconds: float = 0.0
    """The longest optimizer step of this attempt so far, in seconds."""
    finished: bool = False
    """The rank left the run (succeeded or failed on its own): never a hang."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RankBeat:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Seen:
    """A judge's view of one rank: its latest beat and when (judge's monotonic clock, in seconds) each
    counter last changed."""

    beat: RankBeat
    alive_since: float
    moved_since: float


@dataclass(frozen=True)
class Hang:
    """A hang to report: the message names the ranks at fault and the step."""

    message: str
    step: int
    stopped: tuple[int, ...]
    """Ranks that stopped reporting (empty when every rank is alive but none moves)."""


def observe(previous: Mapping[int, Seen], beats: Sequence[RankBeat], now: float) -> dict[int, Seen]:
    """The judge's view after reading `beats` at `now`: a counter that changed (or a rank seen for the first
    time) restarts its clock; an unchanged one keeps it."""
    seen: dict[int, Seen] = {}
    for beat in beats:
        before = previous.get(beat.rank)
        if before is None:
            seen[beat.rank] = Seen(beat, now, now)
            continue
        alive_since = before.alive_since if beat.alive == before.beat.alive else now
        moved_since = before.moved_since if beat.moves == before.beat.moves else now
        seen[beat.rank] = Seen(beat, alive_since, moved_since)
    return seen


def timeout_seconds(configured: int | None, longest_step_seconds: float) -> float:
    """The hang timeout: `retryPolicy.hangTimeoutSeconds` when set, else ten times the longest step seen
    so far and at least FLOOR_SECONDS."""
    if configured is not None:
        return float(configured)
    return max(FLOOR_SECONDS, STEP_MULTIPLE * longest_step_seconds)


def _limit_text(configured: int | None, limit: float) -> str:
    if configured is not None:
        return f"retryPolicy.hangTimeoutSeconds {configured} s"
    return (
        f"{limit:.0f} s: ten times the longest step, at least {FLOOR_SECONDS:.0f} s; "
        "set retryPolicy.hangTimeoutSeconds to change it"
    )


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def verdict(seen: Mapping[int, Seen], world: int, now: float, configured: int | None) -> Hang | None:
    """Whether the gang hangs, from a judge's view of all `world` ranks (None until every rank was seen)."""
    if len(seen) < world or any(s.beat.finished for s in seen.values()):
        return None
    limit = timeout_seconds(configured, max(s.beat.longest_step_seconds for s in seen.values()))
    step = min(s.beat.step for s in seen.values())
    stopped = sorted(r for r, s in seen.items() if now - s.alive_since >= limit)
    if stopped:
        waiting = sorted(set(seen) - set(stopped))
        ago = ", ".join(f"rank {r} {now - seen[r].alive_since:.0f} s ago at step {seen[r].beat.step}" for r in stopped)
        verb = "waits" if len(waiting) == 1 else "wait"
        others = f"; {_ranks(waiting)} {verb} for it" if waiting else ""
        return Hang(
            f"{_ranks(stopped)} stopped reporting ({ago}; limit {_limit_text(configured, limit)}): the process "
            f"is stopped or gone{others}; restarting from the last checkpoint",
            step,
            tuple(stopped),
        )
    if not all(s.beat.armed for s in seen.values()):
        return None
    paused = sorted({s.beat.paused for s in seen.values() if s.beat.paused})
    still = min(now - s.moved_since for s in seen.values())
    if still >= (limit * PAUSED_MULTIPLE if paused else limit):
        doing = f" while {' and '.join(paused)} ({PAUSED_MULTIPLE:.0f} times the limit)" if paused else ""
        return Hang(
            f"no rank has moved for {still:.0f} s at step {step}{doing} (limit {_limit_text(configured, limit)}): "
            "every rank is alive, so a collective or a call waits for ever; restarting from the last checkpoint",
            step,
            (),
        )
    return None


def declares(rank: int, seen: Mapping[int, Seen], now: float, configured: int | None) -> bool:
    """Whether `rank` is the judge that reports a hang: the lowest judge still alive in the view."""
    limit = timeout_seconds(configured, max((s.beat.longest_step_seconds for s in seen.values()), default=0.0))
    alive = [j for j in JUDGES if j in seen and (j == rank or now - seen[j].alive_since < limit)]
    return bool(alive) and alive[0] == rank
