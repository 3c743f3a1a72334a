"""Table tests of the progress read and write cadence (kubetune.policies.progress_cadence)."""

from __future__ import annotations

import itertools

import pytest

from kubetune.api.status import Condition, FineTuneJobStatus, Metrics, Progress
from kubetune.policies.progress_cadence import Cadence, ReadMemory, ReadOutcome, after_read, progress_only

CADENCE = Cadence(write_interval=15.0, unchanged_read_max=60.0, failing_read_max=30.0, unreachable_after=60.0)
SNAP_A = ReadOutcome("snapshot", "step=10")
SNAP_B = ReadOutcome("snapshot", "step=11")
UNREACHABLE = ReadOutcome("unreachable")
REFUSED = ReadOutcome("refused")


@pytest.mark.parametrize(
    ("case", "memory", "read", "now", "read_in", "reconcile_in"),
    [
        ("first snapshot: written at once", ReadMemory(), SNAP_A, 100.0, 15.0, 0.0),
        (
            "changed, last asked 15 s ago: at once",
            ReadMemory("step=10", 15.0, asked_at=85.0, read_at=85.0),
            SNAP_B,
            100.0,
            15.0,
            0.0,
        ),
        (
            "changed, last asked 5 s ago: when 15 s have passed",
            ReadMemory("step=10", 15.0, asked_at=95.0, read_at=95.0),
            SNAP_B,
            100.0,
            15.0,
            10.0,
        ),
        (
            "unchanged: no reconcile, read half as often",
            ReadMemory("step=10", 15.0, asked_at=85.0, read_at=85.0),
            SNAP_A,
            100.0,
            30.0,
            None,
        ),
        (
            "unchanged for long: read at most every 60 s",
            ReadMemory("step=10", 60.0, asked_at=0.0, read_at=40.0),
            SNAP_A,
            100.0,
            60.0,
            None,
        ),
        (
            "changed after a quiet spell: read at the write interval again",
            ReadMemory("step=10", 60.0, asked_at=0.0, read_at=40.0),
            SNAP_B,
            100.0,
            15.0,
            0.0,
        ),
        (
            "result waiting: at once, whatever was asked before",
            ReadMemory("step=10", 15.0, asked_at=99.0, read_at=99.0),
            ReadOutcome("snapshot", "step=10 ready", urgent=True),
            100.0,
            15.0,
            0.0,
        ),
        (
            "answer after failing: at once (the condition is cleared)",
            ReadMemory("step=10", 8.0, strikes=3, failing_since=70.0, asked_at=99.0, read_at=92.0),
            SNAP_A,
            100.0,
            30.0,
            0.0,
        ),
        (
            "first unreachable read: told when the bound has passed",
            ReadMemory("step=10", 15.0, asked_at=85.0, read_at=85.0),
            UNREACHABLE,
            100.0,
            2.0,
            60.0,
        ),
        (
            "unreachable for less than the bound (starting): read every 4 s at most",
            ReadMemory(None, 4.0, strikes=3, failing_since=90.0, read_at=96.0),
            UNREACHABLE,
            100.0,
            4.0,
            None,
        ),
        (
            "unreachable past the bound: backing off to 30 s",
            ReadMemory(None, 4.0, strikes=20, failing_since=30.0, read_at=96.0),
            UNREACHABLE,
            100.0,
            30.0,
            None,
        ),
        (
            "unreachable again, bound not passed: not told, read again within 4 s",
            ReadMemory("step=10", 4.0, strikes=2, failing_since=100.0, read_at=106.0),
            UNREACHABLE,
            110.0,
            4.0,
            None,
        ),
        (
            "unreachable again, the bound passed since the last read: told",
            ReadMemory("step=10", 30.0, strikes=6, failing_since=100.0, read_at=140.0),
            UNREACHABLE,
            170.0,
            30.0,
            0.0,
        ),
        (
            "unreachable again, long past the bound: not told again",
            ReadMemory("step=10", 30.0, strikes=8, failing_since=100.0, read_at=200.0),
            UNREACHABLE,
            230.0,
            30.0,
            None,
        ),
        ("first refused answer: at once", ReadMemory("step=10", 15.0, read_at=85.0), REFUSED, 100.0, 2.0, 0.0),
        (
            "refused again: not told again, backing off",
            ReadMemory("step=10", 2.0, strikes=1, read_at=98.0),
            REFUSED,
            100.0,
            4.0,
            None,
        ),
        (
            "refused after unreachable reads: at once",
            ReadMemory("step=10", 2.0, strikes=1, failing_since=98.0, read_at=98.0),
            REFUSED,
            100.0,
            4.0,
            0.0,
        ),
    ],
)
def test_after_read(
    case: str, memory: ReadMemory, read: ReadOutcome, now: float, read_in: float, reconcile_in: float | None
) -> None:
    steps = after_read(memory, read, now, CADENCE)
    assert (steps.read_in, steps.reconcile_in) == (read_in, reconcile_in), case


def test_writes_of_a_job_that_always_changes_are_the_write_interval_apart() -> None:
    """Read every time it is due, one new step per read: reconciles are asked for at least 15 s apart."""
    memory, now, asked = ReadMemory(), 0.0, []
    for step in range(20):
        steps = after_read(memory, ReadOutcome("snapshot", f"step={step}"), now, CADENCE)
        if steps.reconcile_in is not None:
            asked.append(now + steps.reconcile_in)
        memory, now = steps.memory, now + steps.read_in
    assert len(asked) == 20
    assert min(b - a for a, b in itertools.pairwise(asked)) >= CADENCE.write_interval


def test_a_pod_that_never_answers_is_read_every_30_s_past_the_bound_and_told_about_once() -> None:
    memory, now, told, reads = ReadMemory("step=1", 15.0, read_at=0.0), 0.0, [], 0
    timer: float | None = None
    while now < 600.0:
        steps = after_read(memory, UNREACHABLE, now, CADENCE)
        reads += 1
        if steps.reconcile_in is not None:
            if steps.reconcile_in > 0:
                timer = now + steps.reconcile_in
            else:
                told.append(now)
        memory, now = steps.memory, now + steps.read_in
    assert timer == 60.0  # the timer set at the first failure is the one that tells the status
    assert told == [62.0]  # and the first read at or after the bound tells again, once (the timer may be replaced)
    assert reads <= 60 / 4 + 600 / 30 + 3  # every 4 s while under the bound, then every 30 s


@pytest.mark.parametrize(
    "fields",
    [
        {"write_interval": 0.0},
        {"unchanged_read_max": -1.0},
        {"write_interval": 30.0, "unchanged_read_max": 20.0},
    ],
)
def test_nonsense_cadences_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Cadence(**fields)


RUNNING = FineTuneJobStatus(phase="Running", attempt=1, progress=Progress(step=10), metrics=Metrics(train_loss=2.0))


@pytest.mark.parametrize(
    ("case", "status", "expected"),
    [
        ("nothing changed", RUNNING, False),
        ("a step more", RUNNING.model_copy(update={"progress": Progress(step=11)}), True),
        ("a new loss", RUNNING.model_copy(update={"metrics": Metrics(train_loss=1.9)}), True),
        ("the phase", RUNNING.model_copy(update={"phase": "Restarting", "progress": Progress(step=11)}), False),
        (
            "a condition with the step",
            RUNNING.model_copy(
                update={"progress": Progress(step=11), "conditions": [Condition(type="Overfitting", status="True")]}
            ),
            False,
        ),
    ],
)
def test_only_a_change_of_rank_0s_figures_is_a_progress_write(
    case: str, status: FineTuneJobStatus, expected: bool
) -> None:
    assert progress_only(RUNNING, status) is expected, case
