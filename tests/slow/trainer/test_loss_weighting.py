"""Exact loss weighting through real DeepSpeed runs (as TRL tests it): the same 8 chat examples as one
micro-batch of 8, 2 of 4, 8 of 1, on 1 rank and on 2, give the same first-step loss and gradient norm.

The examples' answers differ in length from 1 to 15 words, so with chat masking the micro-batches carry
very different numbers of trained tokens: a mean per micro-batch averaged over accumulation steps and
ranks (what the loop did before) gives each split another loss and gradient. The in-process version of
this test, with every gradient compared, is trainer/src/kubetune/trainer/test_loss.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import launch, tiny

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: (processes, micro-batch size, accumulation steps): 8 examples per optimizer step in every case.
SPLITS = [(1, 8, 1), (1, 4, 2), (1, 1, 8), (2, 4, 1), (2, 1, 4)]


def uneven_chat(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Chat examples whose answers have 1 to 15 words (and prompts 1 to 4); distinct from `start` on."""
    words = tiny.WORDS
    records = []
    for index in range(start, start + count):
        prompt = " ".join(words[(index + k) % len(words)] for k in range(1 + index % 4))
        answer = " ".join(words[(3 * index + k) % len(words)] for k in range(1 + (7 * index) % 15))
        records.append(tiny.record("chat", prompt, answer))
    return records


def first_step(tmp_path: Path, model: Path, processes: int, micro: int, accumulation: int) -> dict[str, Any]:
    folder = tmp_path / f"split-{processes}x{micro}x{accumulation}"
    train = tiny.write_jsonl(folder / "train.jsonl", uneven_chat(16))
    validation = tiny.write_jsonl(folder / "validation.jsonl", uneven_chat(2, start=len(tiny.WORDS) + 1))
    spec = {
        "dataset": {"format": "chat", "packing": False},
        "hyperparameters": {
            "maxSteps": 1,
            "microBatchSize": micro,
            "gradientAccumulationSteps": accumulation,
            "maxGradNorm": 0,
        },
        "distributed": {"processesPerWorker": processes},
        "checkpointing": {"everySteps": 100, "keep": 1},
    }
    manifest = tiny.write_manifest(folder / "job.yaml", model, train, validation, spec)
    run = launch.run(manifest, folder / "run", processes=processes)
    assert run.returncode == 0, run.log[-4000:]
    (record,) = run.metrics("train")
    return record


def test_any_split_over_micro_batches_and_ranks_gives_the_same_step(tmp_path: Path, tiny_model: Path) -> None:
    steps = {split: first_step(tmp_path, tiny_model, *split) for split in SPLITS}
    reference = steps[SPLITS[0]]
    assert reference["grad_norm"] > 0
    for split, record in steps.items():
        assert record["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5), split
        assert record["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4), split
        assert record["tokens"] == reference["tokens"], split


def test_bf16_accumulates_gradients_in_fp32(tmp_path: Path, tiny_model: Path) -> None:
    """DeepSpeed takes `data_types.grad_accum_dtype: fp32` with bf16 weights under ZeRO-2 and trains."""
    train = tiny.write_jsonl(tmp_path / "train.jsonl", uneven_chat(32))
    validation = tiny.write_jsonl(tmp_path / "validation.jsonl", uneven_chat(2, start=len(tiny.WORDS) + 1))
    spec = {
        "dataset": {"format": "chat"},
        "hyperparameters": {"maxSteps": 3, "microBatchSize": 2, "gradientAccumulationSteps": 4},
        "distributed": {"precision": "bf16", "zeroStage": 2, "gradAccumDtype": "fp32"},
        "checkpointing": {"everySteps": 100, "keep": 1},
    }
    manifest = tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, spec)
    run = launch.run(manifest, tmp_path / "run")
    assert run.returncode == 0, run.log[-4000:]
    assert all(0 < record["train_loss"] < 20 for record in run.metrics("train"))
