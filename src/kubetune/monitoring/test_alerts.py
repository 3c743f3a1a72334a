"""The alert rules pass `promtool check rules`, and `promtool test rules` makes each alert fire on
synthetic series that show its problem and stay quiet on healthy ones.

Every scenario is a promtool unit test (one-minute samples, series notation `a+bxN`), run through the
real promtool against the generated rule file. Annotations are compared too, so their templates are
checked with the labels they will see.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.monitoring.alerts import OPERATOR_ALERTS, TRAINING_ALERTS, Alert, render_rule_file

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (Debian package prometheus)"),
]

ALERTS = {alert.name: alert for alert in (*TRAINING_ALERTS, *OPERATOR_ALERTS)}
JOB = 'namespace="ml", finetunejob="demo"'
POD = f'{JOB}, pod="demo-a1-w0", instance="10.0.0.7:9400"'
JOB_LABELS = {"namespace": "ml", "finetunejob": "demo"}
POD_LABELS = {**JOB_LABELS, "pod": "demo-a1-w0", "instance": "10.0.0.7:9400"}


@dataclass(frozen=True)
class Scenario:
    """Series (selector -> promtool values), and whether `alert` fires at minute `at` with `labels`."""

    alert: str
    series: dict[str, str]
    at: int
    fires: bool
    labels: dict[str, str] = field(default_factory=lambda: dict(POD_LABELS))


SCENARIOS: dict[str, Scenario] = {
    "stalled: steps stop for 25 minutes": Scenario(
        "KubetuneTrainingStalled",
        {
            f"kubetune_optimizer_steps_total{{{POD}}}": "0+1x10 10x40",
            f"kubetune_progress_ratio{{{POD}}}": "0+0.01x10 0.1x40",
        },
        at=35,
        fires=True,
    ),
    "stalled: healthy run": Scenario(
        "KubetuneTrainingStalled",
        {f"kubetune_optimizer_steps_total{{{POD}}}": "0+1x60", f"kubetune_progress_ratio{{{POD}}}": "0+0.01x60"},
        at=45,
        fires=False,
    ),
    "stalled: still starting up": Scenario(
        "KubetuneTrainingStalled",
        {f"kubetune_optimizer_steps_total{{{POD}}}": "0x20", f"kubetune_progress_ratio{{{POD}}}": "0x20"},
        at=12,
        fires=False,
    ),
    "stalled: finished, exporting": Scenario(
        "KubetuneTrainingStalled",
        {
            f"kubetune_optimizer_steps_total{{{POD}}}": "0+1x10 10x40",
            f"kubetune_progress_ratio{{{POD}}}": "0+0.1x10 1x40",
        },
        at=35,
        fires=False,
    ),
    "not finite: NaN train loss": Scenario(
        "KubetuneLossNotFinite", {f"kubetune_train_loss{{{POD}}}": "2 1.5 NaN NaN"}, at=3, fires=True
    ),
    "not finite: infinite train loss": Scenario(
        "KubetuneLossNotFinite", {f"kubetune_train_loss{{{POD}}}": "2 1.5 +Inf +Inf"}, at=3, fires=True
    ),
    "not finite: NaN eval loss": Scenario(
        "KubetuneLossNotFinite",
        {f"kubetune_train_loss{{{POD}}}": "2 1.5 1.4 1.3", f"kubetune_eval_loss{{{POD}}}": "2 2 NaN NaN"},
        at=3,
        fires=True,
    ),
    "not finite: healthy run": Scenario(
        "KubetuneLossNotFinite",
        {f"kubetune_train_loss{{{POD}}}": "3-0.05x30", f"kubetune_eval_loss{{{POD}}}": "3-0.04x30"},
        at=30,
        fires=False,
    ),
    "diverging: loss triples": Scenario(
        "KubetuneLossDiverging", {f"kubetune_train_loss{{{POD}}}": "1x20 3x20"}, at=30, fires=True
    ),
    "diverging: healthy run": Scenario(
        "KubetuneLossDiverging", {f"kubetune_train_loss{{{POD}}}": "3-0.02x60"}, at=40, fires=False
    ),
    "overfitting: eval rises while train falls": Scenario(
        "KubetuneOverfittingSuspected",
        {
            f"kubetune_train_loss{{{POD}}}": "3-0.03x70",
            f"kubetune_eval_loss{{{POD}}}": "2.0x10 1.8x10 1.7x10 1.75x10 1.85x10 1.95x10 2.05x10",
        },
        at=62,
        fires=True,
    ),
    "overfitting: both falling (healthy)": Scenario(
        "KubetuneOverfittingSuspected",
        {
            f"kubetune_train_loss{{{POD}}}": "3-0.03x70",
            f"kubetune_eval_loss{{{POD}}}": "2.0x10 1.9x10 1.8x10 1.75x10 1.72x10 1.70x10 1.69x10",
        },
        at=62,
        fires=False,
    ),
    "overfitting: both rising (diverging, not overfitting)": Scenario(
        "KubetuneOverfittingSuspected",
        {f"kubetune_train_loss{{{POD}}}": "1+0.03x70", f"kubetune_eval_loss{{{POD}}}": "1+0.02x70"},
        at=62,
        fires=False,
    ),
    "overfitting: the trainer's fit diagnostic says so": Scenario(
        "KubetuneOverfittingSuspected", {f"kubetune_overfitting_suspected{{{POD}}}": "0x20 1x20"}, at=35, fires=True
    ),
    "preference overfitting: training pairs ranked far better than validation's": Scenario(
        "KubetunePreferenceOverfitting",
        {
            f'kubetune_reward_accuracy{{{POD}, split="train"}}': "0.6+0.02x20 1x20",
            f'kubetune_reward_accuracy{{{POD}, split="validation"}}': "0.6x40",
        },
        at=38,
        fires=True,
        labels=dict(JOB_LABELS),  # one-to-one arithmetic `on (namespace, finetunejob)` keeps just those
    ),
    "preference overfitting: validation keeps up": Scenario(
        "KubetunePreferenceOverfitting",
        {
            f'kubetune_reward_accuracy{{{POD}, split="train"}}': "0.6+0.02x20 1x20",
            f'kubetune_reward_accuracy{{{POD}, split="validation"}}': "0.6+0.015x20 0.9x20",
        },
        at=38,
        fires=False,
    ),
    "underfitting: the trainer's fit diagnostic says so": Scenario(
        "KubetuneUnderfittingSuspected", {f"kubetune_underfitting_suspected{{{POD}}}": "1x40"}, at=35, fires=True
    ),
    "underfitting: diagnostic clear": Scenario(
        "KubetuneUnderfittingSuspected", {f"kubetune_underfitting_suspected{{{POD}}}": "0x40"}, at=35, fires=False
    ),
    "restart storm: three restarts in minutes": Scenario(
        "KubetuneRestartStorm",
        {'kubetune_job_restarts_total{namespace="ml"}': "0 1 2 3 3 3 3 3 3 3 3"},
        at=10,
        fires=True,
        labels={"namespace": "ml"},
    ),
    "restart storm: one restart": Scenario(
        "KubetuneRestartStorm",
        {'kubetune_job_restarts_total{namespace="ml"}': "0 1 1 1 1 1 1 1 1 1 1"},
        at=10,
        fires=False,
    ),
    "job failed: failure counter grows": Scenario(
        "KubetuneJobFailed",
        {'kubetune_jobs_finished_total{result="Failed"}': "1 1 1 2 2 2"},
        at=5,
        fires=True,
        labels={"result": "Failed"},
    ),
    "job failed: first failure since the operator started": Scenario(
        "KubetuneJobFailed",
        {'kubetune_jobs_finished_total{result="Failed"}': "_x5 1x10"},
        at=8,
        fires=True,
        labels={"result": "Failed"},
    ),
    "job failed: only successes": Scenario(
        "KubetuneJobFailed",
        {'kubetune_jobs_finished_total{result="Succeeded"}': "0+1x10"},
        at=8,
        fires=False,
    ),
    "job failed: an old failure": Scenario(
        "KubetuneJobFailed",
        {'kubetune_jobs_finished_total{result="Failed"}': "2x40"},
        at=30,
        fires=False,
    ),
    "no leader: both replicas stand by for minutes": Scenario(
        "KubetuneOperatorNoLeader",
        {
            'kubetune_operator_leader{namespace="kubetune-system", pod="op-a"}': "1 1 0x10",
            'kubetune_operator_leader{namespace="kubetune-system", pod="op-b"}': "0x12",
        },
        at=8,
        fires=True,
        labels={"namespace": "kubetune-system"},
    ),
    "no leader: a failover of seconds": Scenario(
        "KubetuneOperatorNoLeader",
        {
            'kubetune_operator_leader{namespace="kubetune-system", pod="op-a"}': "1 1 0x10",
            'kubetune_operator_leader{namespace="kubetune-system", pod="op-b"}': "0 0 0 1x9",
        },
        at=8,
        fires=False,
    ),
}


def _expected(alert: Alert, labels: dict[str, str]) -> dict[str, Any]:
    def expand(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)

    rule = alert.to_rule()
    return {
        "exp_labels": {**labels, **rule["labels"]},
        "exp_annotations": {key: expand(value) for key, value in rule["annotations"].items()},
    }


def _unit_test(scenario: Scenario) -> dict[str, Any]:
    alert = ALERTS[scenario.alert]
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in scenario.series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": f"{scenario.at}m",
                        "alertname": scenario.alert,
                        "exp_alerts": [_expected(alert, scenario.labels)] if scenario.fires else [],
                    }
                ],
            }
        ],
    }


def _promtool_test(scenario: Scenario, directory: Path) -> subprocess.CompletedProcess[str]:
    (directory / "rules.yaml").write_text(render_rule_file())
    (directory / "test.yaml").write_text(yaml.safe_dump(_unit_test(scenario), sort_keys=False))
    return subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=directory, capture_output=True, text=True)


def test_promtool_check_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(render_rule_file())
    result = subprocess.run(["promtool", "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


@pytest.mark.parametrize("name", SCENARIOS)
def test_promtool_unit_test(name: str, tmp_path: Path) -> None:
    result = _promtool_test(SCENARIOS[name], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_shown_to_fire_and_to_stay_quiet() -> None:
    firing = {s.alert for s in SCENARIOS.values() if s.fires}
    quiet = {s.alert for s in SCENARIOS.values() if not s.fires}
    assert firing == set(ALERTS)
    assert quiet == set(ALERTS)


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    """The harness can fail: promtool refuses a healthy run claimed to stall."""
    healthy = SCENARIOS["stalled: healthy run"]
    result = _promtool_test(Scenario(healthy.alert, healthy.series, healthy.at, fires=True), tmp_path)
    assert result.returncode != 0
    assert "KubetuneTrainingStalled" in result.stdout + result.stderr
