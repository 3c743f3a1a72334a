"""Hang verdicts: which views of the gang are a hang, who reports it, and the default timeout."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from kubetune.policies.hang import (
    FLOOR_SECONDS,
    RankBeat,
    Seen,
    declares,
    observe,
    timeout_seconds,
    verdict,
)

LIMIT = 20


def view(*ranks: tuple[RankBeat, float, float]) -> dict[int, Seen]:
    """Seen ranks as (beat, seconds since its `alive` changed, seconds since its `moves` changed), at now=1000."""
    return {beat.rank: Seen(beat, 1000.0 - alive_for, 1000.0 - still_for) for beat, alive_for, still_for in ranks}


def beat(rank: int, step: int = 12, **fields: Any) -> RankBeat:
    return replace(RankBeat(rank, alive=5, moves=40, step=step, armed=True, longest_step_seconds=1.5), **fields)


CASES = {
    "a gang that moves": (view((beat(0), 1, 1), (beat(1), 1, 2)), None),
    "rank 1 stopped reporting": (view((beat(0), 1, 30), (beat(1, 11), 25, 25)), ((1,), "rank 1 stopped reporting")),
    "rank 0 and 2 stopped, any phase": (
        view((beat(0, paused="checkpointing"), 21, 21), (beat(1), 1, 21), (beat(2), 22, 22)),
        ((0, 2), "ranks 0, 2 stopped reporting"),
    ),
    "every rank alive, none moves": (view((beat(0), 1, 21), (beat(1), 1, 20)), ((), "no rank has moved for 20 s")),
    "one rank still moves (a slow evaluation on it)": (view((beat(0), 1, 60), (beat(1), 1, 3)), None),
    "still while writing a checkpoint": (view((beat(0, paused="checkpointing"), 1, 90), (beat(1), 1, 90)), None),
    "a checkpoint write that never ends": (
        view((beat(0, paused="checkpointing"), 1, 121), (beat(1, paused="checkpointing"), 1, 120)),
        ((), "no rank has moved for 120 s at step 12 while checkpointing (6 times the limit)"),
    ),
    "still before the first step": (view((beat(0, armed=False), 1, 90), (beat(1, armed=False), 1, 90)), None),
    "a rank finished": (view((beat(0), 1, 90), (beat(1, finished=True), 90, 90)), None),
    "not every rank seen yet": (view((beat(0), 1, 90)), None),
}


@pytest.mark.parametrize("seen, expected", CASES.values(), ids=CASES.keys())
def test_verdict(seen: dict[int, Seen], expected: tuple[tuple[int, ...], str] | None) -> None:
    world = 3 if len(seen) == 3 else 2
    hang = verdict(seen, world, 1000.0, LIMIT)
    if expected is None:
        assert hang is None
        return
    stopped, text = expected
    assert hang is not None and hang.stopped == stopped and text in hang.message, hang
    assert "retryPolicy.hangTimeoutSeconds 20 s" in hang.message
    assert hang.step == min(s.beat.step for s in seen.values())


def test_the_message_says_who_waits_and_when_each_stopped() -> None:
    hang = verdict(view((beat(0), 1, 30), (beat(1, 11), 25, 25)), 2, 1000.0, LIMIT)
    assert hang is not None
    assert hang.message.startswith("rank 1 stopped reporting (rank 1 25 s ago at step 11; limit")
    assert "rank 0 waits for it; restarting from the last checkpoint" in hang.message


@pytest.mark.parametrize(
    "configured, longest_step, expected",
    [(20, 900.0, 20.0), (None, 0.0, FLOOR_SECONDS), (None, 12.0, FLOOR_SECONDS), (None, 45.0, 450.0)],
)
def test_the_default_timeout_is_ten_steps_and_at_least_the_floor(
    configured: int | None, longest_step: float, expected: float
) -> None:
    assert timeout_seconds(configured, longest_step) == expected


def test_the_default_timeout_is_named_in_the_message() -> None:
    slow = view((beat(0, longest_step_seconds=40.0), 1, 401), (beat(1), 1, 401))
    hang = verdict(slow, 2, 1000.0, None)
    assert hang is not None and "limit 400 s: ten times the longest step" in hang.message
    assert verdict(view((beat(0, longest_step_seconds=40.0), 1, 399), (beat(1), 1, 399)), 2, 1000.0, None) is None


def test_observe_restarts_a_clock_only_when_its_counter_changes() -> None:
    first = observe({}, [beat(0), beat(1)], 100.0)
    assert first[0] == Seen(beat(0), 100.0, 100.0)
    later = observe(first, [beat(0, alive=6), beat(1, moves=41)], 130.0)
    assert (later[0].alive_since, later[0].moved_since) == (130.0, 100.0)
    assert (later[1].alive_since, later[1].moved_since) == (100.0, 130.0)


@pytest.mark.parametrize(
    "rank, alive_for, expected",
    [(0, {0: 1, 1: 1}, True), (1, {0: 1, 1: 1}, False), (1, {0: 25, 1: 1}, True), (0, {0: 25, 1: 1}, True)],
)
def test_the_lowest_live_judge_reports(rank: int, alive_for: dict[int, float], expected: bool) -> None:
    seen = view(*((beat(r), alive_for[r], 30) for r in (0, 1)), (beat(2), 1, 30))
    assert declares(rank, seen, 1000.0, LIMIT) is expected
    assert not declares(2, seen, 1000.0, LIMIT), "rank 2 is no judge"


def test_beats_travel_as_json() -> None:
    original = beat(3, paused="exporting", finished=True)
    assert RankBeat.from_json(original.to_json().encode()) == original
