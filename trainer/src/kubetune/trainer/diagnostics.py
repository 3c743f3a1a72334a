"""Fit diagnostics while training: the loss history, the signs the fit policy reads from it, and where
they go (the progress snapshot, the 0/1 gauges, the final result).

The decision itself is the pure policy `kubetune.policies.fit`; this module only keeps its inputs. The
history travels in checkpoints, so a resumed run keeps judging the whole curve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kubetune.api.outcome import FitReport
from kubetune.api.status import ConditionType, Reason
from kubetune.policies.fit import Evaluation, FitSignal, diverged, overfitting, underfitting


@dataclass
class FitHistory:
    """Evaluations so far and the first logged training loss (checkpointed with the run state)."""

    evaluations: list[dict[str, Any]] = field(default_factory=list)
    first_train_loss: float | None = None

    def record_train_loss(self, loss: float) -> None:
        if self.first_train_loss is None:
            self.first_train_loss = loss

    def record_evaluation(self, step: int, eval_loss: float | None, train_loss: float | None) -> None:
        if eval_loss is not None:
            self.evaluations.append(asdict(Evaluation(step, eval_loss, train_loss)))

    def reports(self, rising_evaluations: int, progress: float, learning_rate: float | None = None) -> list[FitReport]:
        """Both diagnostics, True or False, once there are two evaluations to compare — or at once when
        training diverged, which reads UnderfittingSuspected with its own reason and remedy."""
        history = [Evaluation(**e) for e in self.evaluations]
        divergence = diverged(history, self.first_train_loss, learning_rate)
        if len(history) < 2 and divergence is None:
            return []
        signs: dict[str, FitSignal | None] = {
            ConditionType.OVERFITTING_SUSPECTED: overfitting(history, rising_evaluations),
            ConditionType.UNDERFITTING_SUSPECTED: divergence or underfitting(history, self.first_train_loss, progress),
        }
        return [_report(kind, sign, history[-1].step) for kind, sign in signs.items()]


def _report(kind: str, sign: FitSignal | None, step: int) -> FitReport:
    if sign is None:
        message = (
            f"no sign of {'over' if kind == ConditionType.OVERFITTING_SUSPECTED else 'under'}fitting at step {step}"
        )
        return FitReport(type=kind, status="False", reason=Reason.HEALTHY_FIT, message=message)
    return FitReport(type=kind, status="True", reason=sign.reason, message=sign.message, since_step=sign.since_step)


def suspected(reports: list[FitReport], kind: str) -> bool:
    return any(r.type == kind and r.status == "True" for r in reports)
