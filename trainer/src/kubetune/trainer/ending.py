"""The end of a successful run: the TrainerResult, with the evaluation summary and its verdict.

Split from kubetune.trainer.loop (which runs the steps and the export) to keep each module small: what
the result says is a function of the run's state once the model is exported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubetune.api.outcome import ExitReason, TrainerResult
from kubetune.api.status import ApproachResult, EvaluationResult
from kubetune.trainer import baselines

if TYPE_CHECKING:
    from kubetune.trainer.loop import Trainer


def finished_result(trainer: Trainer, outcome: str, message: str, fine_tuned: EvaluationResult | None) -> TrainerResult:
    """The result of `trainer`'s run that ended with `outcome` (Succeeded or EarlyStopped), `fine_tuned`
    being the exported model's figures on the verdict's set."""
    state, engine = trainer.state, trainer.engine
    base = EvaluationResult(**state.base_evaluation) if state.base_evaluation else None
    rows = [ApproachResult(**row) for row in state.baseline_rows or []]
    parameters = baselines.parameter_count(engine.module)
    if trainer.preference is not None and base is not None:  # DPO: the policy against its reference
        # The base model prompted zero-shot is the reference itself, scored the same way: one row, named so.
        rows = [row for row in rows if not (row.model == "base" and row.approach == "zero-shot")]
        rows.insert(0, baselines.reference_row(base, parameters))
    evaluation = baselines.summary(
        base, fine_tuned, rows, parameters, trainer.data.verdict_set_name, len(trainer.data.verdict_set.examples)
    )
    reason = ExitReason.EARLY_STOPPED if outcome == "EarlyStopped" else ExitReason.SUCCEEDED
    return TrainerResult(
        outcome="EarlyStopped" if outcome == "EarlyStopped" else "Succeeded",
        reason=reason.wire_name,
        message=message,
        retryable=False,
        step=state.step,
        total_steps=trainer.total_steps,
        best_metric=state.early_stopping.best,
        best_step=state.early_stopping.best_step,
        output_path=str(trainer.paths.output),
        evaluation=evaluation,
        fit=trainer.recorder.snapshot.fit,
    )
