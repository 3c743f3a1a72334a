"""Fit diagnostics and baselines in real runs (`kubetune run`, two CPU ranks, a tiny model).

Planted over-fitting — eight training pairs learned for many epochs while validation asks about words
never seen — must raise OverfittingSuspected in the job's status; a healthy run must not, and its
result must carry every approach's row and a verdict that matches those rows, all scored on its test
split (which neither training nor the checkpoint choice saw).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.status import ApproachResult
from kubetune.trainer.baselines import verdict
from tests.slow.local.test_run import finish, kubetune_run, status_of
from tests.support import tiny

pytestmark = [pytest.mark.timeout(240)]


def test_planted_overfitting_raises_the_condition(tmp_path: Path, tiny_model: Path) -> None:
    train, validation = tiny.write_dataset(tmp_path / "data", "prompt-completion", train=8, validation=8)
    spec = {
        "hyperparameters": {"epochs": 40, "learningRate": 3e-3},
        "evaluation": {"everySteps": 2, "overfittingEvaluations": 3},
        "checkpointing": {"everySteps": 100},
    }
    manifest = tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, spec, name="overfit")
    code, output = finish(kubetune_run(manifest, tmp_path / "run"))
    assert code == 0, output
    status = status_of(tmp_path / "run")
    condition = next((c for c in status.conditions if c.type == "OverfittingSuspected"), None)
    assert condition is not None and condition.status == "True", status.conditions
    assert condition.reason == "EvalLossRising" and "weight decay" in condition.message


def test_a_healthy_run_reports_baselines_on_its_test_split_and_no_overfitting(tmp_path: Path, tiny_model: Path) -> None:
    train, validation = tiny.write_dataset(tmp_path / "data", "prompt-completion", train=72, validation=8)
    spec = {
        "dataset": {"testSplit": 0.1, "maxSeqLength": 64},
        "hyperparameters": {"maxSteps": 12, "epochs": 3},
        "evaluation": {
            "everySteps": 4,
            "compareBaseModel": True,
            "maxNewTokens": 4,
            "baselines": {"fewShotExamples": 2},
        },
    }
    manifest = tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, spec, name="healthy")
    code, output = finish(kubetune_run(manifest, tmp_path / "run"))
    assert code == 0, output
    status = status_of(tmp_path / "run")
    assert not any(c.type == "OverfittingSuspected" and c.status == "True" for c in status.conditions)
    assert status.evaluation is not None and status.evaluation.approaches is not None
    rows: list[ApproachResult] = status.evaluation.approaches
    assert [r.name for r in rows] == ["base zero-shot", "base 2-shot", "fine-tuned"]
    for row in rows:
        assert row.exact_match is not None and row.eval_loss is not None and row.parameters and row.parameters > 0
        assert row.latency_seconds and row.latency_seconds > 0 and row.tokens_per_second and row.tokens_per_second > 0
    assert [r.examples for r in rows] == [8, 8, 8]  # the test split: 10% of 72, not the 8 validation examples
    assert status.evaluation.scored_on == "test"
    assert status.evaluation.verdict == f"{verdict(rows)}; scored on 8 test examples that no training decision saw"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "base 2-shot" in report and status.evaluation.verdict in report and "(test set)" in report
    data_report = (tmp_path / "run" / "data_report.md").read_text()
    assert "| records | 64 | 8 | 8 |" in data_report
