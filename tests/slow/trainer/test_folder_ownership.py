"""A checkpoint folder belongs to its run: the real trainer (two ranks) refuses another run's checkpoints.

The reference run (conftest.py) recorded itself in its checkpoint folder. A second run on a copy of that
folder, its manifest the same but for the learning rate, must stop in every rank's preflight, before it
loads a model or writes a file, naming the field with its old and new value.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kubetune.api.outcome import ExitReason, TrainerResult
from tests.slow.trainer.conftest import ReferenceRun
from tests.support import launch

pytestmark = [pytest.mark.timeout(300)]


def test_a_changed_learning_rate_on_the_same_folder_is_refused_before_training(
    tmp_path: Path, reference_manifest: Path, reference_run: ReferenceRun
) -> None:
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(reference_run.workdir / "checkpoints", checkpoints)
    owner_before = (checkpoints / "owner.json").read_text()
    steps_before = sorted(p.name for p in checkpoints.glob("step-*"))
    assert steps_before, "the reference run left no checkpoint"

    manifest = yaml.safe_load(reference_manifest.read_text())
    old_rate = json.loads(owner_before)["fingerprint"]["fields"]["hyperparameters.learningRate"]
    manifest["spec"].setdefault("hyperparameters", {})["learningRate"] = old_rate * 10
    edited = tmp_path / "job.yaml"
    edited.write_text(yaml.safe_dump(manifest, sort_keys=False))

    run = launch.run(edited, tmp_path / "run", extra=("--checkpoint-dir", str(checkpoints)))

    result = TrainerResult.model_validate(run.result())
    assert (result.outcome, result.reason, result.retryable) == ("Failed", "InvalidConfig", False), run.log[-4000:]
    assert f"(exitcode: {ExitReason.INVALID_CONFIG.exit_code})" in run.log
    assert f"spec.hyperparameters.learningRate: {json.dumps(old_rate)} -> {json.dumps(old_rate * 10)}" in result.message
    assert "spec.storage.checkpoints at a new folder" in result.message
    assert not (run.workdir / "metrics.jsonl").exists(), "a step was trained"
    assert (checkpoints / "owner.json").read_text() == owner_before
    assert sorted(p.name for p in checkpoints.glob("step-*")) == steps_before
