"""Is the model over- or under-fitting? Warning signs read off the loss curves while training runs.

Over-fitting: the validation loss rises for `rising_evaluations` evaluations in a row while the training
loss keeps falling — the model is memorising the training set instead of learning the task. Under-fitting:
by the end of training both losses are still close to where they started — the model has not learned
the task. Divergence: the training loss rose far above where it started (or is no longer a number) —
the model is not learning either, but for the opposite reason (the learning rate is too high), so it
reads UnderfittingSuspected with its own reason, TrainingDiverged, and the remedy that fits: the usual
under-fitting remedies (more epochs, a higher learning rate) would make it worse. All become conditions
on the job (cluster and local) and 0/1 Prometheus gauges, with the remedies in the message. Early
stopping acts on the first sign; this policy only names it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune.api.status import ConditionType, Reason

#: Default count of consecutive rising evaluations that raises OverfittingSuspected.
RISING_EVALUATIONS = 3
#: Under-fitting: both losses end above this fraction of their first value…
PLATEAU_RATIO = 0.9
#: …and training has come at least this far (fraction of the planned steps).
PLATEAU_AFTER_PROGRESS = 0.5
#: Divergence: the training loss at an evaluation is at least this many times its first logged value
#: (the KubetuneLossDiverging alert uses the same factor against its window's minimum).
DIVERGENCE_FACTOR = 2.0


@dataclass(frozen=True)
class Evaluation:
    """One evaluation point: the step, the validation loss, and the training loss logged by then."""

    step: int
    eval_loss: float
    train_loss: float | None


@dataclass(frozen=True)
class FitSignal:
    """A suspected fit problem, ready to become a condition."""

    condition_type: str
    reason: str
    message: str
    since_step: int


def overfitting(history: Sequence[Evaluation], rising_evaluations: int = RISING_EVALUATIONS) -> FitSignal | None:
    """OverfittingSuspected when the last `rising_evaluations` evaluations each raised the eval loss while
    the train loss fell over the same span; `since_step` is the step of the lowest eval loss before it."""
    if rising_evaluations < 1 or len(history) < rising_evaluations + 1:
        return None
    window = history[-(rising_evaluations + 1) :]
    rising = all(later.eval_loss > earlier.eval_loss for earlier, later in itertools.pairwise(window))
    first_train, last_train = window[0].train_loss, window[-1].train_loss
    if not rising or first_train is None or last_train is None or last_train >= first_train:
        return None
    start = window[0]
    message = (
        f"eval loss rose for {rising_evaluations} evaluations in a row since step {start.step} "
        f"({start.eval_loss:.4g} -> {window[-1].eval_loss:.4g}) while train loss fell ({first_train:.4g} -> "
        f"{last_train:.4g}): the model is memorising the training set. Usual remedies: early stopping "
        "(earlyStopping), more weight decay or dropout, fewer epochs, a lower learning rate, or more data."
    )
    return FitSignal(ConditionType.OVERFITTING_SUSPECTED, Reason.OVERFITTING, message, start.step)


def underfitting(
    history: Sequence[Evaluation],
    first_train_loss: float | None,
    progress: float,
    ratio: float = PLATEAU_RATIO,
) -> FitSignal | None:
    """UnderfittingSuspected when, past half of training, both losses are still above `ratio` of where
    they started (the first logged train loss, the first eval loss)."""
    if progress < PLATEAU_AFTER_PROGRESS or len(history) < 2 or first_train_loss is None:
        return None
    last = history[-1]
    if last.train_loss is None:
        return None
    eval_high = last.eval_loss >= ratio * history[0].eval_loss
    train_high = last.train_loss >= ratio * first_train_loss
    if not (eval_high and train_high):
        return None
    message = (
        f"after {progress:.0%} of training both losses are still near their start (train {first_train_loss:.4g} -> "
        f"{last.train_loss:.4g}, eval {history[0].eval_loss:.4g} -> {last.eval_loss:.4g}): the model is not "
        "learning the task. Usual remedies: more epochs, a higher learning rate, less regularisation, LoRA with a "
        "higher rank or full fine-tuning, and checking that the data teaches what is evaluated."
    )
    return FitSignal(ConditionType.UNDERFITTING_SUSPECTED, Reason.UNDERFITTING, message, last.step)


def diverged(
    history: Sequence[Evaluation], first_train_loss: float | None, learning_rate: float | None = None
) -> FitSignal | None:
    """UnderfittingSuspected with reason TrainingDiverged when the training loss reached DIVERGENCE_FACTOR
    times its first logged value (or a loss stopped being a finite number) and has stayed above that first
    value since, up to the last evaluation: a partial recovery that still ends above where training began
    is still a diverged run, one that came back below it is not. `since_step` is where it went up. Unlike
    plain under-fitting this needs no minimum progress: a diverged run only gets worse."""
    if not history or first_train_loss is None:
        return None
    start = first_train_loss

    def broken(point: Evaluation) -> bool:
        return not math.isfinite(point.eval_loss) or (
            point.train_loss is not None and not math.isfinite(point.train_loss)
        )

    def above_start(point: Evaluation) -> bool:
        return broken(point) or (point.train_loss is not None and point.train_loss > start)

    streak = len(history)
    while streak > 0 and above_start(history[streak - 1]):
        streak -= 1
    onset = next((p for p in history[streak:] if broken(p) or (p.train_loss or 0.0) >= DIVERGENCE_FACTOR * start), None)
    if onset is None:
        return None
    last = history[-1]
    peak = max((p.train_loss for p in history[streak:] if p.train_loss is not None), default=math.nan)
    now = f"{last.train_loss:.4g}" if last.train_loss is not None else "?"
    course = f"to {now}" if f"{peak:.4g}" == now else f"up to {peak:.4g} and is {now} now"
    message = (
        f"training diverged at step {onset.step}: the train loss went from {start:.4g} {course} (eval "
        f"{history[0].eval_loss:.4g} -> {last.eval_loss:.4g}); the learning rate is too high for this model, and "
        f"more training will not help: {divergence_remedy(learning_rate)}."
    )
    return FitSignal(ConditionType.UNDERFITTING_SUSPECTED, Reason.DIVERGED, message, onset.step)


def divergence_remedy(learning_rate: float | None = None) -> str:
    """What to do about a diverging run, wherever one is reported (this condition, a non-finite loss)."""
    now = (
        f" (now {learning_rate:g}; a tenth of it is a good first try)"
        if learning_rate
        else " (a tenth is a good first try)"
    )
    return (
        f"lower spec.hyperparameters.learningRate{now}, and keep warm-up (warmupRatio) and gradient clipping "
        "(maxGradNorm) on"
    )
