"""When to stop training because validation stopped improving, and which evaluation was the best.

The trainer feeds every evaluation's metric to `observe` and acts on the decision: save the best
checkpoint when `improved`, stop all ranks and export the best weights when `stop`. The state is plain
data so that it is saved in every checkpoint and a resumed run keeps counting where it left off.

Rules (as in Keras' and transformers' EarlyStopping callbacks):
- an evaluation improves when it beats the best so far by more than `minDelta` (strictly: lower for
  `mode: min`, higher for `mode: max`); the first finite evaluation always improves;
- a non-finite metric (NaN, inf) never improves;
- after `patience` evaluations in a row without improvement, stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kubetune.api.operations import EarlyStoppingSpec


@dataclass(frozen=True)
class EarlyStoppingState:
    """What the policy remembers between evaluations (saved in checkpoints)."""

    best: float | None = None
    """Best metric value so far, in the metric's own units; None before the first finite evaluation."""
    best_step: int | None = None
    """Optimizer step of the best evaluation."""
    evals_without_improvement: int = 0
    """Evaluations since the best one."""


@dataclass(frozen=True)
class EarlyStoppingDecision:
    """The outcome of one evaluation."""

    state: EarlyStoppingState
    improved: bool
    """This evaluation is the new best (save it as the best checkpoint)."""
    stop: bool
    """Stop training now and export the best checkpoint."""
    message: str
    """Why, in one sentence (for logs and the result)."""


def is_improvement(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode` (min or max)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def observe(spec: EarlyStoppingSpec, state: EarlyStoppingState, value: float, step: int) -> EarlyStoppingDecision:
    """Account for one evaluation of `spec.metric` with `value` at optimizer `step`."""
    if is_improvement(value, state.best, spec.mode, spec.min_delta):
        new = EarlyStoppingState(best=value, best_step=step, evals_without_improvement=0)
        return EarlyStoppingDecision(new, improved=True, stop=False, message=f"{spec.metric} improved to {value:.6g}")
    waited = state.evals_without_improvement + 1
    new = replace(state, evals_without_improvement=waited)
    best = "none yet" if state.best is None else f"{state.best:.6g} at step {state.best_step}"
    if waited >= spec.patience:
        message = (
            f"{spec.metric} did not improve by more than {spec.min_delta:g} for {waited} evaluation(s) "
            f"(patience {spec.patience}); best {best}"
        )
        return EarlyStoppingDecision(new, improved=False, stop=True, message=message)
    message = f"{spec.metric} {value:.6g} is no improvement on {best} ({waited}/{spec.patience})"
    return EarlyStoppingDecision(new, improved=False, stop=False, message=message)
