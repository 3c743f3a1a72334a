"""The early-stopping policy's table: a sequence of evaluations -> when it stops and which was best."""

from __future__ import annotations

import math

import pytest

from kubetune.api.operations import EarlyStoppingSpec
from kubetune.policies.early_stopping import EarlyStoppingState, is_improvement, observe

pytestmark = pytest.mark.timeout(10)

LOSS = EarlyStoppingSpec(metric="evalLoss", mode="min", patience=2, min_delta=0.0)
LOSS_DELTA = EarlyStoppingSpec(metric="evalLoss", mode="min", patience=2, min_delta=0.1)
ACCURACY = EarlyStoppingSpec(metric="evalTokenAccuracy", mode="max", patience=1, min_delta=0.0)
NAN = math.nan


@pytest.mark.parametrize(
    ("spec", "values", "stop_at", "best", "best_index"),
    [
        # falling loss: never stops, the last is best
        (LOSS, [3.0, 2.0, 1.0], None, 1.0, 2),
        # two evaluations without improvement with patience 2: stops on the second
        (LOSS, [3.0, 2.0, 2.5, 2.4], 3, 2.0, 1),
        # an equal value is no improvement (strict)
        (LOSS, [2.0, 2.0, 2.0], 2, 2.0, 0),
        # an improvement resets the count
        (LOSS, [3.0, 3.1, 2.9, 3.0, 3.0], 4, 2.9, 2),
        # minDelta: 1.95 is not better than 2.0 by more than 0.1
        (LOSS_DELTA, [2.0, 1.95, 1.91], 2, 2.0, 0),
        (LOSS_DELTA, [2.0, 1.85, 1.8, 1.79], 3, 1.85, 1),
        # NaN never improves, also not as the first evaluation
        (LOSS, [NAN, 2.0, NAN, NAN], 3, 2.0, 1),
        # accuracy goes up; patience 1 stops on the first non-improvement
        (ACCURACY, [0.2, 0.5, 0.4], 2, 0.5, 1),
    ],
)
def test_sequences(
    spec: EarlyStoppingSpec, values: list[float], stop_at: int | None, best: float, best_index: int
) -> None:
    state = EarlyStoppingState()
    stopped = None
    for index, value in enumerate(values):
        decision = observe(spec, state, value, step=(index + 1) * 10)
        state = decision.state
        assert decision.improved == (state.best_step == (index + 1) * 10 and state.evals_without_improvement == 0)
        if decision.stop:
            stopped = index
            assert "patience" in decision.message and f"step {state.best_step}" in decision.message
            break
    assert stopped == stop_at
    assert state.best == best
    assert state.best_step == (best_index + 1) * 10


@pytest.mark.parametrize(
    ("value", "best", "mode", "delta", "expected"),
    [
        (1.0, None, "min", 0.0, True),
        (math.inf, None, "min", 0.0, False),
        (0.9, 1.0, "min", 0.0, True),
        (0.9, 1.0, "min", 0.1, False),
        (0.89, 1.0, "min", 0.1, True),
        (1.1, 1.0, "max", 0.0, True),
        (1.0, 1.0, "max", 0.0, False),
        (0.9, 1.0, "max", 0.0, False),
    ],
)
def test_is_improvement(value: float, best: float | None, mode: str, delta: float, expected: bool) -> None:
    assert is_improvement(value, best, mode, delta) is expected


def test_state_survives_a_resume() -> None:
    """The state is plain data: a resumed run continues the count from the saved state."""
    saved = observe(LOSS, EarlyStoppingState(), 2.0, step=10).state
    saved = observe(LOSS, saved, 2.1, step=20).state
    restored = EarlyStoppingState(**vars(saved))
    assert observe(LOSS, restored, 2.2, step=30).stop
