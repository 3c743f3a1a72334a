"""`kubetune run` looks at the machine first: an unset accelerator trains on the CPU when no CUDA device
is visible (and says so in one line); an explicit `nvidia-gpu` there is refused at once, exit 2.

Both run the real command with the tiny model, on a machine without a GPU (torch's CUDA build with no
device visible: `torch.cuda.is_available()` is False); on a machine with one they are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.status import FineTuneJobStatus
from tests.support import tiny

pytestmark = [pytest.mark.timeout(240)]


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


needs_no_gpu = pytest.mark.skipif(_cuda_visible(), reason="a CUDA device is visible: the fallback cannot happen")


def kubetune_run(manifest: Path, workdir: Path) -> tuple[int, str]:
    command = [sys.executable, "-m", "kubetune.cli", "run", str(manifest), "--workdir", str(workdir), "--plain"]
    done = subprocess.run(
        [*command, "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=200,
    )
    return done.returncode, done.stdout


def manifest_with(tmp_path: Path, tiny_model: Path, distributed: dict[str, Any]) -> Path:
    """The tiny job, 4 steps, with `distributed` merged in (a None value removes the field)."""
    train, validation = tiny.write_dataset(tmp_path / "data", "prompt-completion")
    overrides = {"hyperparameters": {"maxSteps": 4}, "checkpointing": {"everySteps": 4}, "distributed": distributed}
    return tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, overrides)


@needs_no_gpu
def test_an_unset_accelerator_trains_on_the_cpu_and_says_so(tmp_path: Path, tiny_model: Path) -> None:
    # What a new user writes: neither accelerator nor precision (bf16 by default, which the CPU computes).
    manifest = manifest_with(tmp_path, tiny_model, {"accelerator": None, "precision": None})
    assert "accelerator" not in yaml.safe_load(manifest.read_text())["spec"]["distributed"]
    code, output = kubetune_run(manifest, tmp_path / "run")
    assert code == 0, output
    notices = [line for line in output.splitlines() if "no CUDA device visible" in line]
    assert notices == [
        "no CUDA device visible: training on the CPU (spec.distributed.accelerator is unset; set it to choose)"
    ]
    status = FineTuneJobStatus.model_validate_json((tmp_path / "run" / "status.json").read_text())
    assert status.phase == "Succeeded" and status.restarts == 0
    kept = yaml.safe_load((tmp_path / "run" / "job.yaml").read_text())["spec"]["distributed"]
    assert "accelerator" not in kept, "the workdir keeps the job as written, so that a rerun resumes it"


@needs_no_gpu
def test_an_explicit_gpu_without_one_is_refused_at_once(tmp_path: Path, tiny_model: Path) -> None:
    manifest = manifest_with(tmp_path, tiny_model, {"accelerator": "nvidia-gpu"})
    code, output = kubetune_run(manifest, tmp_path / "run")
    assert code == 2, output
    assert f"error: {manifest}: spec.distributed.accelerator: nvidia-gpu but no CUDA device is visible" in output
    assert "set it to cpu" in output and "Traceback" not in output
    assert not (tmp_path / "run").exists(), "nothing may start, nor be written, for a job this machine cannot run"
