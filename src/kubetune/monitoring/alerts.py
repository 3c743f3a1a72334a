"""The alert rules for kubetune, written once as data.

`rule_file()` is a standard Prometheus rule file (what `promtool check rules` and `promtool test
rules` read); the chart's PrometheusRule embeds the same groups (generated into
`charts/kubetune/files/prometheus-rules.yaml`). The thresholds are constants here so that the
promtool unit tests (test_alerts.py beside this module) and the README quote the same numbers.

Every trainer alert is keyed by `namespace` and `finetunejob`, the labels the trainer puts on its
metrics; `on(namespace, finetunejob)` joins ignore whatever target labels (pod, instance, ...) the
PodMonitor adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import yaml

Severity = Literal["critical", "warning", "info"]

#: Minutes without a single optimizer step, while the trainer is up and not finished, before the job
#: counts as stalled. A step of a large model takes seconds; evaluation and checkpointing of one take
#: minutes, so 15 leaves room for both.
STALLED_MINUTES = 15
#: Window, in minutes, over which the trend of eval and train loss is fitted (least squares, `deriv`).
OVERFITTING_WINDOW_MINUTES = 30
#: Train loss this many times above its minimum over the divergence window counts as diverging.
DIVERGENCE_FACTOR = 2
#: Window, in minutes, for the divergence check.
DIVERGENCE_WINDOW_MINUTES = 30
#: Gang restarts within the storm window that make a restart storm.
RESTART_STORM_COUNT = 3
#: Window, in minutes, in which restarts are counted.
RESTART_STORM_WINDOW_MINUTES = 30
#: Window, in minutes, in which a failed job is reported.
FAILED_WINDOW_MINUTES = 10
#: DPO: training reward accuracy above validation's by more than this (0-1) counts as memorising pairs.
REWARD_ACCURACY_GAP = 0.25
#: Minutes the gap must last (a few evaluations; validation's figure changes only at evaluations).
REWARD_ACCURACY_GAP_MINUTES = 15

JOB = "namespace, finetunejob"


@dataclass(frozen=True)
class Alert:
    """One alerting rule."""

    name: str
    expr: str
    for_: str
    """How long `expr` must hold before the alert fires (a Prometheus duration)."""
    severity: Severity
    summary: str
    description: str
    """May use `{{ $labels.x }}` (no `$value`: the promtool tests compare annotations exactly)."""

    def to_rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def _m(minutes: int) -> str:
    return f"{minutes}m"


_WHERE = "{{ $labels.namespace }}/{{ $labels.finetunejob }}"

TRAINING_ALERTS: tuple[Alert, ...] = (
    Alert(
        name="KubetuneTrainingStalled",
        # No step in the window, the trainer was already up at its start (so start-up is not a stall)
        # and training has not finished (a final evaluation or export takes no steps).
        expr=(
            f"(changes(kubetune_optimizer_steps_total[{_m(STALLED_MINUTES)}]) == 0)\n"
            f"  and (kubetune_optimizer_steps_total offset {_m(STALLED_MINUTES)})\n"
            f"  unless on ({JOB}) (kubetune_progress_ratio >= 1)"
        ),
        for_="1m",
        severity="warning",
        summary="Training made no progress",
        description=f"FineTuneJob {_WHERE} has completed no optimizer step for {STALLED_MINUTES} minutes "
        "while its trainer is running.",
    ),
    Alert(
        name="KubetuneLossNotFinite",
        # NaN is the one value not equal to itself.
        expr=(
            "(kubetune_train_loss != kubetune_train_loss)\n"
            "  or (abs(kubetune_train_loss) == +Inf)\n"
            "  or (kubetune_eval_loss != kubetune_eval_loss)"
        ),
        for_="0m",
        severity="critical",
        summary="Loss is NaN or infinite",
        description=f"FineTuneJob {_WHERE} reports a non-finite loss: training has diverged numerically.",
    ),
    Alert(
        name="KubetuneLossDiverging",
        expr=(
            f"kubetune_train_loss\n"
            f"  > {DIVERGENCE_FACTOR} * min_over_time(kubetune_train_loss[{_m(DIVERGENCE_WINDOW_MINUTES)}])"
        ),
        for_="5m",
        severity="warning",
        summary="Training loss is diverging",
        description=f"FineTuneJob {_WHERE}: train loss is more than {DIVERGENCE_FACTOR}x its minimum of the last "
        f"{DIVERGENCE_WINDOW_MINUTES} minutes; consider a lower learning rate.",
    ),
    Alert(
        name="KubetuneOverfittingSuspected",
        # The seed's warning sign from the metrics alone: the fitted trend of eval loss rises while that
        # of train loss falls. The trainer's own fit diagnostic (a 0/1 gauge, where published) is honoured too.
        expr=(
            f"(\n"
            f"  (deriv(kubetune_eval_loss[{_m(OVERFITTING_WINDOW_MINUTES)}]) > 0)\n"
            f"    and on ({JOB}) (deriv(kubetune_train_loss[{_m(OVERFITTING_WINDOW_MINUTES)}]) < 0)\n"
            f")\n"
            f"or on ({JOB}) (kubetune_overfitting_suspected == 1)"
        ),
        for_="10m",
        severity="warning",
        summary="Overfitting suspected",
        description=f"FineTuneJob {_WHERE}: validation loss has been rising while training loss falls over "
        f"{OVERFITTING_WINDOW_MINUTES} minutes; the best checkpoint is behind you (consider early stopping).",
    ),
    Alert(
        name="KubetunePreferenceOverfitting",
        # DPO only (the reward gauges exist only there): the policy ranks its training pairs far better
        # than the validation pairs, the preference-tuning form of overfitting.
        expr=(
            f'kubetune_reward_accuracy{{split="train"}}\n'
            f'  - on ({JOB}) kubetune_reward_accuracy{{split="validation"}}\n'
            f"  > {REWARD_ACCURACY_GAP}"
        ),
        for_=_m(REWARD_ACCURACY_GAP_MINUTES),
        severity="warning",
        summary="Preference tuning memorises its pairs",
        description=f"FineTuneJob {_WHERE} (DPO): reward accuracy on training pairs has been more than "
        f"{REWARD_ACCURACY_GAP:.2f} above validation's for {REWARD_ACCURACY_GAP_MINUTES} minutes; consider a higher "
        "`method.dpo.beta`, fewer epochs, or early stopping on evalRewardAccuracy.",
    ),
    Alert(
        name="KubetuneUnderfittingSuspected",
        # Published only by trainers with the fit diagnostic; silent otherwise.
        expr="kubetune_underfitting_suspected == 1",
        for_="30m",
        severity="info",
        summary="Underfitting suspected",
        description=f"FineTuneJob {_WHERE}: the loss has plateaued high (the trainer's fit diagnostic).",
    ),
)

OPERATOR_ALERTS: tuple[Alert, ...] = (
    # The operator counts restarts per namespace (a per-job label would grow without bound), so the storm
    # is reported for the namespace; its jobs' Restarting conditions say which one.
    Alert(
        name="KubetuneRestartStorm",
        expr=(
            f"sum by (namespace) (increase(kubetune_job_restarts_total[{_m(RESTART_STORM_WINDOW_MINUTES)}]))\n"
            f"  >= {RESTART_STORM_COUNT}"
        ),
        for_="0m",
        severity="warning",
        summary="Gangs restarted repeatedly",
        description=f"FineTuneJobs in namespace {{{{ $labels.namespace }}}} restarted at least {RESTART_STORM_COUNT} "
        f"times in {RESTART_STORM_WINDOW_MINUTES} minutes; `kubectl get ftj -n {{{{ $labels.namespace }}}}` "
        "shows which (RESTARTS), their events say why.",
    ),
    Alert(
        name="KubetuneJobFailed",
        # increase() cannot see a counter's first increment when its series is born at 1, hence the
        # second arm: a failure counter that exists now but did not before the window.
        expr=(
            f'(increase(kubetune_jobs_finished_total{{result="Failed"}}[{_m(FAILED_WINDOW_MINUTES)}]) > 0)\n'
            f"or (\n"
            f'  (kubetune_jobs_finished_total{{result="Failed"}} > 0)\n'
            f'    unless (kubetune_jobs_finished_total{{result="Failed"}} offset {_m(FAILED_WINDOW_MINUTES)})\n'
            f")"
        ),
        for_="0m",
        severity="warning",
        summary="A FineTuneJob failed",
        description=f"A FineTuneJob failed in the last {FAILED_WINDOW_MINUTES} minutes; "
        "`kubectl get ftj -A` shows which, its Failed condition says why.",
    ),
    # A failover takes seconds (the lease duration plus a retry period): minutes without a leader mean none
    # can take the Lease (RBAC on Leases, the API server unreachable from every replica, crash loops).
    Alert(
        name="KubetuneOperatorNoLeader",
        expr="max by (namespace) (kubetune_operator_leader) < 1",
        for_="2m",
        severity="critical",
        summary="No kubetune operator replica leads",
        description="No operator replica in namespace {{ $labels.namespace }} has held the Lease for 2 minutes: "
        "no FineTuneJob is reconciled (progress, restarts, new jobs wait). The replicas' logs say why "
        "(`kubectl logs -n {{ $labels.namespace }} -l app.kubernetes.io/component=operator`).",
    ),
)


def rule_groups() -> list[dict[str, Any]]:
    """The rule groups, as in a rule file's `groups` and a PrometheusRule's `spec.groups`."""
    return [
        {"name": "kubetune.training", "rules": [alert.to_rule() for alert in TRAINING_ALERTS]},
        {"name": "kubetune.operator", "rules": [alert.to_rule() for alert in OPERATOR_ALERTS]},
    ]


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the PromQL) as literal blocks, so the generated file reads like source."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _string)


def render_rule_file() -> str:
    """The rule file checked in at `charts/kubetune/files/prometheus-rules.yaml`."""
    header = "# Generated from src/kubetune/monitoring/alerts.py by `make generate`; do not edit by hand.\n"
    return header + yaml.dump({"groups": rule_groups()}, Dumper=_BlockDumper, sort_keys=False, width=120)
