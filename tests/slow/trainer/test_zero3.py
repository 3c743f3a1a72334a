"""ZeRO-3 through real 2-rank DeepSpeed runs on the CPU: the model is loaded into shards, the export
gathers one parameter at a time, and early stopping exports the best step's weights.

- the same job under ZeRO-2 and ZeRO-3 exports the same weights (full fine-tuning, and LoRA merged
  into the base weights from the gathered CPU copies);
- under ZeRO-3 an early-stopped run exports the best checkpoint's weights (DeepSpeed's
  `load_module_only` reads placeholders there; the weights come from the fp32 partitions), compared
  with DeepSpeed's own consolidation of that checkpoint (`zero_to_fp32`);
- the model is loaded into shards: every parameter tensor is partitioned before DeepSpeed's engine
  exists (transformers' zero.Init, the trainer logs the count).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.outcome import TrainerResult
from tests.slow.trainer.test_runs import assert_same_weights, load_weights
from tests.support import launch, tiny

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run_job(folder: Path, model: Path, zero_stage: int, overrides: dict[str, Any]) -> launch.Finished:
    train, validation = tiny.write_dataset(folder / "data", "prompt-completion", train=24, validation=8)
    spec = {"distributed": {"zeroStage": zero_stage}, **overrides}
    manifest = tiny.write_manifest(folder / "job.yaml", model, train, validation, spec)
    run = launch.run(manifest, folder / "run", processes=2)
    assert run.returncode == 0, run.log[-4000:]
    return run


@pytest.mark.parametrize(
    "method",
    [{"type": "full"}, {"type": "lora", "lora": {"rank": 4, "alpha": 8, "merge": True}}],
    ids=["full", "lora-merged"],
)
def test_zero3_exports_the_weights_zero2_exports(tmp_path: Path, tiny_model: Path, method: dict[str, Any]) -> None:
    overrides = {
        "method": method,
        "hyperparameters": {"maxSteps": 6, "learningRate": 1e-3},
        "evaluation": {"everySteps": 100},
        "checkpointing": {"everySteps": 100, "keep": 1},
    }
    zero2 = run_job(tmp_path / "zero2", tiny_model, 2, overrides)
    zero3 = run_job(tmp_path / "zero3", tiny_model, 3, overrides)
    base = load_weights(tiny_model) if (tiny_model / "model.safetensors").exists() else None
    left, right = load_weights(zero2.workdir / "output"), load_weights(zero3.workdir / "output")
    assert_same_weights(left, right, atol=1e-4)
    if base is not None:  # and training did change them (the comparison is not between two untouched copies)
        assert any(not left[k].equal(base[k]) for k in left if k in base)


def test_zero3_early_stopping_exports_the_best_steps_weights(tmp_path: Path, tiny_model: Path) -> None:
    overrides = {
        "hyperparameters": {"epochs": 40, "learningRate": 1e-2},
        "evaluation": {"everySteps": 2},
        "earlyStopping": {"metric": "evalLoss", "mode": "min", "patience": 3},
        "checkpointing": {"everySteps": 1000, "keep": 1},
    }
    train, validation = tiny.write_dataset(tmp_path / "data", "prompt-completion", train=16, validation=16)
    spec = {"distributed": {"zeroStage": 3}, **overrides}
    manifest = tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, spec)
    run = launch.run(manifest, tmp_path / "run", processes=2)
    assert run.returncode == 0, run.log[-4000:]
    result = TrainerResult.model_validate(run.result())
    assert result.outcome == "EarlyStopped" and result.best_step is not None and result.step > result.best_step
    best = run.workdir / "checkpoints" / f"step-{result.best_step:08d}"
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(best), tag="ds")
    exported = load_weights(run.workdir / "output")
    assert_same_weights({k: v for k, v in consolidated.items() if k in exported}, exported)
    loaded = re.search(r"ZeRO-3: (\d+) of (\d+) parameter tensors loaded already partitioned", run.log)
    assert loaded is not None and int(loaded[1]) == int(loaded[2]) > 0, "the model was not loaded into shards"
