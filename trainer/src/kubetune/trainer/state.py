"""What a run carries between steps and across restarts: the stop request and the checkpointed state.

`RunState` is exactly what a checkpoint's sidecar holds besides DeepSpeed's own files: the step, the
token count, early-stopping and fit-diagnostics history, and the evaluations the result reports.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from kubetune.policies.early_stopping import EarlyStoppingState
from kubetune.trainer.diagnostics import FitHistory
from kubetune.trainer.packing import BatchPlan

log = logging.getLogger(__name__)


@dataclass
class StopRequest:
    """Set by the SIGTERM/SIGINT handler; read at step boundaries."""

    requested: bool = False
    signal_name: str = ""
    _event: threading.Event = field(default_factory=threading.Event)

    def request(self, signal_name: str) -> None:
        self.requested, self.signal_name = True, signal_name
        self._event.set()

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less when a stop is requested."""
        self._event.wait(seconds)


@dataclass
class RunState:
    """What a checkpoint's sidecar carries besides DeepSpeed's files."""

    step: int = 0
    tokens: int = 0
    """Non-padding training tokens of the whole gang so far."""
    early_stopping: EarlyStoppingState = field(default_factory=EarlyStoppingState)
    best_evaluation: dict[str, Any] | None = None
    base_evaluation: dict[str, Any] | None = None
    last_evaluation: dict[str, Any] | None = None
    last_evaluated_step: int | None = None
    baseline_rows: list[dict[str, Any]] | None = None
    """The prompting baselines' results (computed once, before the first step)."""
    fit: FitHistory = field(default_factory=FitHistory)
    reference_log_probs: dict[str, list[list[float]]] | None = None
    """DPO with a precomputed reference: per set (train, validation, test), each pair's [chosen, rejected]
    log-probability under the starting weights, computed before the first step."""

    def to_sidecar(self, plan: BatchPlan) -> dict[str, Any]:
        data = {"sequences": plan.items, "global_batch": plan.global_batch, "seed": plan.seed, "next_step": self.step}
        return {**asdict(self), "data": data}

    @classmethod
    def from_sidecar(cls, sidecar: dict[str, Any], plan: BatchPlan) -> RunState:
        data = sidecar.get("data", {})
        if (data.get("sequences"), data.get("global_batch"), data.get("seed")) != (
            plan.items,
            plan.global_batch,
            plan.seed,
        ):
            log.warning("the checkpoint's data order (%s) differs from this run's; examples may repeat", data)
        names = {f for f in cls.__dataclass_fields__ if f not in ("early_stopping", "fit")}
        state = cls(**{k: v for k, v in sidecar.items() if k in names})
        state.early_stopping = EarlyStoppingState(**sidecar.get("early_stopping", {}))
        state.fit = FitHistory(**sidecar.get("fit", {}))
        return state
