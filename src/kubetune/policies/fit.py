"""Is the model over- or under-fitting? Two warning signs read off the loss curves while training runs.

Over-fitting: the validation loss rises for `rising_evaluations` evaluations in a row while the training
loss keeps falling — the model is memorising the training set instead of learning the task. Under-fitting:
by the end of training both losses are still close to where they started — the model has not learned
the task. Both become conditions on the job (cluster and local) and 0/1 Prometheus gauges, with the
usual remedies in the message. Early stopping acts on the first sign; this policy only names it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune.api.status import ConditionType, Reason

#: Default count of consecutive rising evaluations that raises OverfittingSuspected.
RISING_EVALUATIONS = 3
#: Under-fitting: both losses end above this fraction of their first value…
PLATEAU_RATIO = 0.9
#: …and training has come at least this far (fraction of the planned steps).
PLATEAU_AFTER_PROGRESS = 0.5


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
