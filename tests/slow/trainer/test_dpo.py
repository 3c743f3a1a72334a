"""Preference tuning (DPO) in real runs: two CPU processes under torchrun, real DeepSpeed, the tiny Llama.

The pairs (tests/support/tiny.preference_examples) prefer an answer ending in `.` over the same answer
ending in `?`: learnable from any pair and true of pairs never trained on, while the random starting
model ranks them by chance. So the exported model must rank the held-out test pairs better than its
reference did, under ZeRO-2 and ZeRO-3; and a run killed mid-way must resume to the same figures and
weights as the uninterrupted one (the reference log-probabilities travel in the checkpoint).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.outcome import TrainerResult
from kubetune.monitoring.metrics import TRAINER_METRICS
from tests.slow.trainer.test_runs import assert_same_weights, load_weights, newest_step
from tests.support import launch, tiny
from tests.support.builders import deep_merge
from tests.support.ports import free_port

pytestmark = [pytest.mark.timeout(420)]

DPO_OVERRIDES: dict[str, Any] = {
    "dataset": {"format": "preference", "maxSeqLength": 64},
    "method": {"type": "dpo", "dpo": {"beta": 0.5}},
    "hyperparameters": {"epochs": 2, "learningRate": 2e-3},
    "evaluation": {"everySteps": 4},
    "checkpointing": {"everySteps": 2, "keep": 2},
}


def write_job(folder: Path, tiny_model: Path, overrides: dict[str, Any] | None = None) -> Path:
    train = tiny.write_jsonl(folder / "data" / "train.jsonl", tiny.preference_examples(48))
    validation = tiny.write_jsonl(folder / "data" / "validation.jsonl", tiny.preference_examples(8, start=48))
    test = tiny.write_jsonl(folder / "data" / "test.jsonl", tiny.preference_examples(16, start=56))
    overrides = deep_merge(deep_merge(DPO_OVERRIDES, {"dataset": {"test": str(test)}}), overrides or {})
    return tiny.write_manifest(folder / "job.yaml", tiny_model, train, validation, overrides, name="dpo")


def run_job(manifest: Path, workdir: Path) -> launch.Finished:
    return launch.run(manifest, workdir)


def run_serving_metrics(manifest: Path, workdir: Path) -> tuple[launch.Finished, str]:
    """Run to the end and scrape rank 0's /metrics once the result is written (the trainer lingers)."""
    port = free_port()
    argv = launch.command(manifest, workdir, metrics_port=port, extra=("--metrics-linger-seconds", "120"))
    process, log = launch.start(argv, workdir, launch.environment())
    try:
        launch.wait_for_trainer(lambda: (workdir / "result.json").exists(), process, log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        launch.kill_group(process, signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        launch.kill_group(process)
    return launch.Finished(workdir, 0, log.read_text()), text


def assert_reward_metrics_match_the_catalogue(text: str) -> None:
    """Every DPO-only catalogued metric is published, with its type and labels, for both splits."""
    for metric in (m for m in TRAINER_METRICS if m.dpo_only):
        assert re.search(rf"^# TYPE {metric.name} {metric.type}$", text, re.M), metric.name
        samples = re.findall(rf"^{metric.name}\{{([^}}]*)\}} (\S+)$", text, re.M)
        splits = set()
        for labels, value in samples:
            names = {pair.split("=", 1)[0] for pair in labels.split(",")}
            assert names == set(metric.labels), (metric.name, names)
            assert float(value) == float(value), (metric.name, value)  # not NaN
            splits |= set(re.findall(r'split="(\w+)"', labels))
        assert splits == {"train", "validation"}, (metric.name, samples)
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr


def verdict_rows(result: TrainerResult) -> dict[str, Any]:
    assert result.evaluation is not None and result.evaluation.approaches is not None
    return {row.name: row for row in result.evaluation.approaches}


#: Full weights with the precomputed reference under ZeRO-2 and ZeRO-3; LoRA with the live reference
#: (the adapters disabled for each batch).
VARIANTS = {
    # With a prompting baseline asked for: pairs are prompted for their chosen answer and scored by exact match.
    "full-zero2": {
        "distributed": {"zeroStage": 2},
        "evaluation": {"baselines": {"fewShotExamples": 2, "embeddings": "base-model"}, "maxNewTokens": 4},
    },
    "full-zero3": {"distributed": {"zeroStage": 3}},
    "lora-live-reference": {
        "method": {"dpo": {"weights": "lora", "reference": "live"}, "lora": {"rank": 8, "alpha": 16}},
        "hyperparameters": {"learningRate": 1e-2},
    },
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dpo_ranks_held_out_pairs_better_than_its_reference(tmp_path: Path, tiny_model: Path, variant: str) -> None:
    manifest = write_job(tmp_path, tiny_model, VARIANTS[variant])
    run, metrics_text = run_serving_metrics(manifest, tmp_path / "run")
    assert_reward_metrics_match_the_catalogue(metrics_text)
    result = TrainerResult.model_validate(run.result())
    assert result.outcome == "Succeeded", result.message
    rows = verdict_rows(result)
    reference, tuned = rows["reference (starting model)"], rows["fine-tuned"]
    assert reference.examples == tuned.examples == 16  # the test pairs, not the 8 validation pairs
    assert reference.preference_accuracy is not None and tuned.preference_accuracy is not None
    assert tuned.preference_accuracy > reference.preference_accuracy, rows
    assert tuned.reward_accuracy is not None and tuned.reward_accuracy > 0.5
    assert tuned.reward_margin is not None and tuned.reward_margin > 0
    assert result.evaluation is not None and result.evaluation.scored_on == "test"
    assert result.evaluation.verdict is not None
    if variant == "full-zero2":  # a few-shot row has no preference accuracy: all three compare on exact match
        # The base model prompted zero-shot is the reference: one row, not two.
        assert sorted(rows) == ["base 2-shot", "fine-tuned", "reference (starting model)"], rows
        assert rows["base 2-shot"].exact_match is not None and rows["base 2-shot"].examples == 16, rows
        assert tuned.exact_match is not None and reference.exact_match is not None, rows
        assert "exact match" in result.evaluation.verdict, result.evaluation.verdict
    else:
        assert "preference accuracy" in result.evaluation.verdict, result.evaluation.verdict
    # Training figures reach the metrics log and the status.
    records = run.metrics("train")
    assert records and all("reward_accuracy" in r and "reward_margin" in r for r in records), records[:2]
    progress = json.loads((run.workdir / "progress.json").read_text())
    assert progress["metrics"]["trainRewards"]["rewardAccuracy"] is not None, progress["metrics"]
    assert progress["metrics"]["evalRewards"]["rewardMargin"] is not None, progress["metrics"]
    # The exported model ranks the pairs as the run said: loaded by transformers, scored here.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.data import Record
    from kubetune.trainer.preference import pair_log_probs, tokenize_pair

    model = AutoModelForCausalLM.from_pretrained(run.workdir / "output").eval()
    tokenizer = AutoTokenizer.from_pretrained(run.workdir / "output")
    records = [Record(r, "test.jsonl", i) for i, r in enumerate(tiny.preference_examples(16, start=56))]
    pairs = [tokenize_pair(record, tokenizer, 64) for record in records]
    with torch.no_grad():
        chosen, rejected = pair_log_probs(model, pairs, tokenizer.pad_token_id or 0, "cpu")  # type: ignore[arg-type]
    assert float((chosen > rejected).float().mean()) == pytest.approx(tuned.preference_accuracy)


def test_a_killed_dpo_run_resumes_to_the_uninterrupted_result(tmp_path: Path, tiny_model: Path) -> None:
    manifest = write_job(tmp_path, tiny_model)
    uninterrupted = run_job(manifest, tmp_path / "whole")
    assert uninterrupted.returncode == 0, uninterrupted.log[-4000:]

    workdir = tmp_path / "killed"
    argv = launch.command(manifest, workdir)
    process, log = launch.start(argv, workdir, launch.environment())
    launch.wait_for_trainer(lambda: newest_step(workdir / "checkpoints") >= 4, process, log)
    launch.kill_group(process, signal.SIGKILL)
    process.wait(timeout=30)
    assert newest_step(workdir / "checkpoints") < 12, "the run finished before it could be killed"
    shutil.move(str(log), str(log) + ".killed")
    resumed = run_job(manifest, workdir)
    assert resumed.returncode == 0, resumed.log[-4000:]
    assert "resumed from checkpoint" in resumed.log
    ours, theirs = (TrainerResult.model_validate(r.result()) for r in (resumed, uninterrupted))
    for name, row in verdict_rows(theirs).items():
        mine = verdict_rows(ours)[name]
        for field in ("preference_accuracy", "reward_accuracy", "reward_margin", "eval_loss"):
            assert getattr(mine, field) == pytest.approx(getattr(row, field), abs=1e-5), (name, field)
    assert_same_weights(load_weights(workdir / "output"), load_weights(uninterrupted.workdir / "output"))
