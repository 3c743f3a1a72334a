"""The catalogue of metrics kubetune publishes, as the dashboard, the alerts and the README see them.

The trainer and the operator define their metrics with prometheus-client in their own modules; this
table is what the monitoring artefacts are written against. It is not a second definition that could
silently drift: the real-Prometheus test scrapes a real training run and the real operator and fails
when a catalogued metric is missing or has another type, and the README's metrics table is generated
from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "histogram"]
Source = Literal["trainer", "operator"]

#: Labels every trainer metric carries. `namespace` is the job's namespace; `finetunejob` its name (not
#: `job`, which Prometheus owns for the scrape job).
TRAINER_LABELS = ("namespace", "finetunejob")


@dataclass(frozen=True)
class Metric:
    """One published metric."""

    name: str
    """Exposition name (a counter's `_total` included)."""
    type: MetricType
    source: Source
    help: str
    """What it measures, with its unit."""
    labels: tuple[str, ...] = TRAINER_LABELS
    gpu_only: bool = False
    """Published only when training on a GPU (absent on CPU runs)."""
    dpo_only: bool = False
    """Published only by preference tuning (`method.type: dpo`; absent on supervised runs)."""


TRAINER_METRICS: tuple[Metric, ...] = (
    Metric("kubetune_train_loss", "gauge", "trainer", "Mean training loss over the last logging window."),
    Metric("kubetune_eval_loss", "gauge", "trainer", "Validation loss at the latest evaluation."),
    Metric("kubetune_best_eval_loss", "gauge", "trainer", "Lowest validation loss so far."),
    Metric("kubetune_learning_rate", "gauge", "trainer", "Current learning rate."),
    Metric("kubetune_grad_norm", "gauge", "trainer", "Global gradient L2 norm at the latest step (before clipping)."),
    Metric("kubetune_epoch", "gauge", "trainer", "Fractional epochs completed."),
    Metric("kubetune_optimizer_steps_total", "counter", "trainer", "Optimizer steps completed."),
    Metric("kubetune_tokens_total", "counter", "trainer", "Non-padding training tokens processed by the gang."),
    Metric(
        "kubetune_skipped_steps_total",
        "counter",
        "trainer",
        "Optimizer steps skipped by the fp16 loss scaler (gradient overflow; the scale is lowered).",
    ),
    Metric(
        "kubetune_unauthenticated_requests_total",
        "counter",
        "trainer",
        "Requests to rank 0's /progress or /result refused: no valid attempt token (KUBETUNE_RANK0_TOKEN).",
    ),
    Metric("kubetune_step_duration_seconds", "histogram", "trainer", "Wall time of one optimizer step, in seconds."),
    Metric("kubetune_progress_ratio", "gauge", "trainer", "Optimizer steps done / planned, 0 to 1."),
    Metric("kubetune_estimated_remaining_seconds", "gauge", "trainer", "Estimated time to finish, in seconds."),
    Metric(
        "kubetune_evals_without_improvement", "gauge", "trainer", "Evaluations since the best one (early stopping)."
    ),
    Metric(
        "kubetune_checkpoint_save_duration_seconds",
        "gauge",
        "trainer",
        "Wall time of the latest checkpoint save, in seconds.",
    ),
    Metric(
        "kubetune_overfitting_suspected",
        "gauge",
        "trainer",
        "1 while eval loss rises and train loss falls (the OverfittingSuspected condition), else 0.",
    ),
    Metric(
        "kubetune_underfitting_suspected",
        "gauge",
        "trainer",
        "1 while both losses stay near their start late in training (UnderfittingSuspected), else 0.",
    ),
    Metric(
        "kubetune_gpu_memory_peak_bytes",
        "gauge",
        "trainer",
        "Peak accelerator memory allocated, in bytes.",
        gpu_only=True,
    ),
    Metric(
        "kubetune_mfu_ratio",
        "gauge",
        "trainer",
        "Model FLOPs utilisation: achieved / peak FLOP/s, 0 to 1.",
        gpu_only=True,
    ),
)

#: DPO's reward figures, per `split` (`train`: the last step; `validation`: the last evaluation).
_DPO_LABELS = (*TRAINER_LABELS, "split")
TRAINER_METRICS += (
    Metric(
        "kubetune_reward_accuracy",
        "gauge",
        "trainer",
        "DPO: fraction of pairs whose chosen answer's reward beats the rejected one's, 0 to 1.",
        _DPO_LABELS,
        dpo_only=True,
    ),
    Metric(
        "kubetune_reward_margin",
        "gauge",
        "trainer",
        "DPO: mean chosen minus rejected reward (beta x log-ratio to the reference, nats).",
        _DPO_LABELS,
        dpo_only=True,
    ),
    Metric(
        "kubetune_chosen_reward",
        "gauge",
        "trainer",
        "DPO: mean reward of the chosen answers (beta x log-ratio to the reference, nats).",
        _DPO_LABELS,
        dpo_only=True,
    ),
    Metric(
        "kubetune_rejected_reward",
        "gauge",
        "trainer",
        "DPO: mean reward of the rejected answers (beta x log-ratio to the reference, nats).",
        _DPO_LABELS,
        dpo_only=True,
    ),
)

OPERATOR_METRICS: tuple[Metric, ...] = (
    Metric(
        "kubetune_jobs", "gauge", "operator", "FineTuneJobs the operator reconciles, by phase.", ("namespace", "phase")
    ),
    Metric(
        "kubetune_job_restarts_total",
        "counter",
        "operator",
        "Gang restarts counted against maxRestarts.",
        ("namespace",),
    ),
    Metric(
        "kubetune_jobs_finished_total", "counter", "operator", "Jobs that reached Succeeded or Failed.", ("result",)
    ),
    Metric(
        "kubetune_reconcile_duration_seconds",
        "histogram",
        "operator",
        "Time of one reconcile of one job, in seconds.",
        (),
    ),
    Metric(
        "kubetune_api_errors_total",
        "counter",
        "operator",
        "Failed Kubernetes API calls (code 0: no response).",
        ("verb", "code"),
    ),
    Metric(
        "kubetune_operator_leader",
        "gauge",
        "operator",
        "1 while this operator replica leads (holds the Lease and reconciles), 0 while it stands by.",
        (),
    ),
)

ALL_METRICS: tuple[Metric, ...] = TRAINER_METRICS + OPERATOR_METRICS


def metric(name: str) -> Metric:
    """The catalogued metric called `name` (KeyError when there is none)."""
    for candidate in ALL_METRICS:
        if candidate.name == name:
            return candidate
    raise KeyError(name)
