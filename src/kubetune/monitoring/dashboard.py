"""The kubetune Grafana dashboard, built as code with grafana-foundation-sdk.

The panels are a table (`ROWS`) of titles, units and PromQL; `build_dashboard()` turns it into the
SDK's typed builders and `render_dashboard_json()` into the JSON that `make generate` writes to
`charts/kubetune/files/dashboards/kubetune.json` (shipped as a ConfigMap for Grafana's sidecar). A
drift test keeps the file equal to this source, and the real-Prometheus test runs every query of every
panel against a real training run.

Queries filter on the dashboard's `$namespace` and `$job` variables (multi-select, "All" = `.*`) and
use Grafana's `$__rate_interval` / `$__range`, which Grafana substitutes before querying Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common as gcommon_model
from grafana_foundation_sdk.models import dashboard as gmodel

UID = "kubetune-training"
TITLE = "kubetune / Fine-tuning jobs"
#: Series selector of the trainer's metrics under the dashboard's variables.
JOB_SELECTOR = 'namespace=~"$namespace", finetunejob=~"$job"'
NAMESPACE_SELECTOR = 'namespace=~"$namespace"'
PER_JOB = "namespace, finetunejob"
DATASOURCE = gmodel.DataSourceRef(type_val="prometheus", uid="${datasource}")

PanelKind = Literal["timeseries", "stat"]


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = "{{namespace}}/{{finetunejob}}"


@dataclass(frozen=True)
class PanelSpec:
    """One panel: what it shows and how."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    """A Grafana unit id: `s`, `bytes`, `percentunit`, `short`, ..."""
    kind: PanelKind = "timeseries"
    width: int = 8
    """Grid columns of 24."""


def _job(metric: str) -> str:
    return f"{metric}{{{JOB_SELECTOR}}}"


def _quantile(q: float, metric: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (le, {PER_JOB}) (rate({metric}_bucket{{{JOB_SELECTOR}}}[$__rate_interval])))"
    )


TRAINING = (
    PanelSpec(
        "Train vs eval loss",
        "Training loss (mean over the logging window) against validation loss at each evaluation. Eval loss "
        "rising while train loss falls is the sign of overfitting.",
        (
            Query(_job("kubetune_train_loss"), "{{finetunejob}} train"),
            Query(_job("kubetune_eval_loss"), "{{finetunejob}} eval"),
        ),
        width=12,
    ),
    PanelSpec(
        "Best eval loss",
        "Lowest validation loss so far; the best checkpoint is taken here.",
        (Query(_job("kubetune_best_eval_loss")),),
        width=6,
    ),
    PanelSpec(
        "Evaluations without improvement",
        "Evaluations since the best one; early stopping acts at its patience.",
        (Query(_job("kubetune_evals_without_improvement")),),
        kind="stat",
        width=6,
    ),
    PanelSpec("Learning rate", "The scheduler's current learning rate.", (Query(_job("kubetune_learning_rate")),)),
    PanelSpec(
        "Gradient norm",
        "Global L2 norm of the gradients; spikes precede divergence.",
        (Query(_job("kubetune_grad_norm")),),
    ),
    PanelSpec(
        "Tokens per second",
        "Non-padding training tokens per second over the whole gang.",
        (Query(f"sum by ({PER_JOB}) (rate(kubetune_tokens_total{{{JOB_SELECTOR}}}[$__rate_interval]))"),),
        unit="short",
    ),
)

PROGRESS = (
    PanelSpec(
        "Progress",
        "Optimizer steps done over steps planned.",
        (Query(_job("kubetune_progress_ratio")),),
        unit="percentunit",
        kind="stat",
        width=6,
    ),
    PanelSpec(
        "Estimated time remaining",
        "The trainer's estimate of the time to finish, from the recent step rate.",
        (Query(_job("kubetune_estimated_remaining_seconds")),),
        unit="s",
        kind="stat",
        width=6,
    ),
    PanelSpec("Epoch", "Fractional epochs completed.", (Query(_job("kubetune_epoch")),), kind="stat", width=6),
    PanelSpec(
        "Optimizer steps",
        "Optimizer steps completed by the current attempt.",
        (Query(_job("kubetune_optimizer_steps_total")),),
        kind="stat",
        width=6,
    ),
    PanelSpec(
        "Step time",
        "Wall time of one optimizer step: median and 90th percentile.",
        (
            Query(_quantile(0.5, "kubetune_step_duration_seconds"), "{{finetunejob}} p50"),
            Query(_quantile(0.9, "kubetune_step_duration_seconds"), "{{finetunejob}} p90"),
        ),
        unit="s",
        width=12,
    ),
    PanelSpec(
        "Checkpoint save time",
        "Wall time of the latest checkpoint save.",
        (Query(_job("kubetune_checkpoint_save_duration_seconds")),),
        unit="s",
        width=12,
    ),
)

ACCELERATOR = (
    PanelSpec(
        "GPU memory (peak)",
        "Peak accelerator memory allocated by rank 0 (published on GPUs only).",
        (Query(_job("kubetune_gpu_memory_peak_bytes")),),
        unit="bytes",
        width=12,
    ),
    PanelSpec(
        "Model FLOPs utilisation",
        "Achieved over peak FLOP/s of the accelerator (published on GPUs only).",
        (Query(_job("kubetune_mfu_ratio")),),
        unit="percentunit",
        width=12,
    ),
)

#: Preference tuning (DPO) only: supervised jobs publish none of these series ("No data").
PREFERENCE = (
    PanelSpec(
        "Reward accuracy (DPO)",
        "Fraction of pairs whose chosen answer's reward beats the rejected one's, on the last training step "
        "and the last evaluation. Training far above validation: the policy memorises its pairs.",
        (Query(_job("kubetune_reward_accuracy"), "{{finetunejob}} {{split}}"),),
        unit="percentunit",
    ),
    PanelSpec(
        "Reward margin (DPO)",
        "Mean chosen minus rejected reward (beta x log-ratio to the reference, nats), train and validation.",
        (Query(_job("kubetune_reward_margin"), "{{finetunejob}} {{split}}"),),
    ),
    PanelSpec(
        "Chosen vs rejected reward (DPO)",
        "Mean reward of the chosen and of the rejected answers on validation pairs. Both falling: the policy "
        "lowers the chosen answers' likelihood too, only more slowly.",
        (
            Query(f'kubetune_chosen_reward{{{JOB_SELECTOR}, split="validation"}}', "{{finetunejob}} chosen"),
            Query(f'kubetune_rejected_reward{{{JOB_SELECTOR}, split="validation"}}', "{{finetunejob}} rejected"),
        ),
    ),
)

OPERATOR = (
    PanelSpec(
        "Jobs by phase",
        "FineTuneJobs in each phase, from the operator.",
        (Query(f"sum by (phase) (kubetune_jobs{{{NAMESPACE_SELECTOR}}})", "{{phase}}"),),
    ),
    PanelSpec(
        "Restarts",
        "Gang restarts in the selected time range, per namespace (the operator counts them per namespace).",
        (
            Query(
                f"sum by (namespace) (increase(kubetune_job_restarts_total{{{NAMESPACE_SELECTOR}}}[$__range]))",
                "{{namespace}}",
            ),
        ),
        kind="stat",
    ),
    PanelSpec(
        "Jobs finished",
        "Jobs that succeeded or failed in the selected time range, all namespaces.",
        (Query("sum by (result) (increase(kubetune_jobs_finished_total[$__range]))", "{{result}}"),),
        kind="stat",
    ),
    PanelSpec(
        "Reconcile time (p99)",
        "99th percentile of the operator's handler durations.",
        (
            Query(
                "histogram_quantile(0.99, sum by (le) (rate(kubetune_reconcile_duration_seconds_bucket[$__rate_interval])))",
                "p99",
            ),
        ),
        unit="s",
        width=12,
    ),
    PanelSpec(
        "Kubernetes API errors",
        "Failed API calls of the operator per second, by verb and HTTP code (0: no response).",
        (Query("sum by (verb, code) (rate(kubetune_api_errors_total[$__rate_interval]))", "{{verb}} {{code}}"),),
        width=12,
    ),
)

ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    ("Training", TRAINING),
    ("Progress", PROGRESS),
    ("Accelerator", ACCELERATOR),
    ("Preference tuning (DPO)", PREFERENCE),
    ("Operator", OPERATOR),
)

PANEL_HEIGHT = 8


def _targets(spec: PanelSpec) -> list[Builder[Dataquery]]:
    return [
        prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(chr(ord("A") + index))
        for index, query in enumerate(spec.queries)
    ]


def _panel(spec: PanelSpec, panel_id: int) -> timeseries.Panel | stat.Panel:
    panel: timeseries.Panel | stat.Panel
    if spec.kind == "timeseries":
        legend = gcommon.VizLegendOptions().display_mode(gcommon_model.LegendDisplayMode.LIST)
        panel = timeseries.Panel().legend(legend.placement(gcommon_model.LegendPlacement.BOTTOM).show_legend(True))
    else:
        panel = stat.Panel().reduce_options(gcommon.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    panel.id(panel_id).title(spec.title).description(spec.description).unit(spec.unit).datasource(DATASOURCE)
    panel.span(spec.width).height(PANEL_HEIGHT).targets(_targets(spec))
    return panel


def _variables() -> list[Builder[gmodel.VariableModel]]:
    namespace = (
        gdash.QueryVariable("namespace")
        .label("Namespace")
        .datasource(DATASOURCE)
        .query('label_values({__name__=~"kubetune_progress_ratio|kubetune_jobs"}, namespace)')
        .refresh(gmodel.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .sort(gmodel.VariableSort.ALPHABETICAL_ASC)
    )
    job = (
        gdash.QueryVariable("job")
        .label("FineTuneJob")
        .datasource(DATASOURCE)
        .query(f"label_values(kubetune_progress_ratio{{{NAMESPACE_SELECTOR}}}, finetunejob)")
        .refresh(gmodel.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .sort(gmodel.VariableSort.ALPHABETICAL_ASC)
    )
    datasource = gdash.DatasourceVariable("datasource").label("Data source").type("prometheus")
    return [datasource, namespace, job]


def build_dashboard() -> gmodel.Dashboard:
    """The dashboard as the SDK's model."""
    builder = (
        gdash.Dashboard(TITLE)
        .uid(UID)
        .description("Training progress and health of kubetune FineTuneJobs, and the operator that runs them.")
        .tags(["kubetune", "training"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .tooltip(gmodel.DashboardCursorSync.CROSSHAIR)
        .variables(_variables())
    )
    panel_id = 0
    for title, panels in ROWS:
        panel_id += 1
        builder.with_row(gdash.Row(title).id(panel_id))
        for spec in panels:
            panel_id += 1
            builder.with_panel(_panel(spec, panel_id))
    return builder.build()


def render_dashboard_json() -> str:
    """The dashboard JSON checked in under `charts/kubetune/files/dashboards/`."""
    return json.dumps(build_dashboard(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def panel_queries(dashboard_json: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in a rendered dashboard, rows included."""
    found: list[tuple[str, str]] = []
    for panel in json.loads(dashboard_json)["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            found += [(inner["title"], target["expr"]) for target in inner.get("targets", [])]
    return found
