"""Observations: termination messages and signals."""

from __future__ import annotations

import pytest

from kubetune.api.outcome import TrainerResult
from kubetune.policies.observed import WorkerObservation, missing_indexes, parse_termination_message

pytestmark = pytest.mark.timeout(10)

RESULT = TrainerResult(outcome="Failed", reason="DataError", message="train.jsonl:3: not JSON", retryable=False)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (RESULT.termination_message(), "DataError"),
        (RESULT.termination_message() + "\n", "DataError"),
        ("", None),
        (None, None),
        ("Traceback (most recent call last):", None),
        ('{"outcome": "Failed"}', None),
    ],
)
def test_parse_termination_message(text: str | None, reason: str | None) -> None:
    parsed = parse_termination_message(text)
    assert (parsed.reason if parsed else None) == reason


@pytest.mark.parametrize(
    ("exit_code", "signal", "killed_by"),
    [(137, None, 9), (143, None, 15), (1, None, None), (None, 9, 9), (None, None, None)],
)
def test_killed_by_signal(exit_code: int | None, signal: int | None, killed_by: int | None) -> None:
    assert (
        WorkerObservation(index=0, attempt=1, state="failed", exit_code=exit_code, signal=signal).killed_by_signal
        == killed_by
    )


def test_missing_indexes() -> None:
    workers = [WorkerObservation(index=i, attempt=a, state="running") for a, i in [(1, 0), (2, 1)]]
    assert missing_indexes(workers, 2, 3) == [0, 2]
