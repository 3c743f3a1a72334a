"""Real training runs: two CPU processes under torchrun, real DeepSpeed, the tiny Llama.

Each test here launches (or inspects) a real run; they are marked slow. Pure logic is tested without
any launch in the other files of this folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.outcome import ExitReason, ProgressSnapshot, TrainerResult
from tests.slow.trainer.conftest import ReferenceRun
from tests.support import launch, tiny
from tests.support.builders import deep_merge

pytestmark = [pytest.mark.timeout(300)]

#: Trainer metrics, their Prometheus type, and a check of the value's plausibility for the reference run.
EXPECTED_METRICS: dict[str, tuple[str, Any]] = {
    "kubetune_train_loss": ("gauge", lambda v: 0 < v < 10),
    "kubetune_eval_loss": ("gauge", lambda v: 0 < v < 10),
    "kubetune_best_eval_loss": ("gauge", lambda v: 0 < v < 10),
    "kubetune_learning_rate": ("gauge", lambda v: v == pytest.approx(3e-3)),
    "kubetune_grad_norm": ("gauge", lambda v: 0 < v < 1e4),
    "kubetune_epoch": ("gauge", lambda v: v == pytest.approx(3.0)),
    "kubetune_optimizer_steps": ("counter", lambda v: v == 60),
    "kubetune_tokens": ("counter", lambda v: v > 60 * 8 * 5),
    "kubetune_skipped_steps": ("counter", lambda v: v == 0),
    "kubetune_step_duration_seconds": ("histogram", None),
    "kubetune_progress_ratio": ("gauge", lambda v: v == 1.0),
    "kubetune_estimated_remaining_seconds": ("gauge", lambda v: v == 0),
    "kubetune_evals_without_improvement": ("gauge", lambda v: v >= 0),
    "kubetune_checkpoint_save_duration_seconds": ("gauge", lambda v: 0 < v < 60),
}


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def losses(run: launch.Finished) -> list[float]:
    return [r["train_loss"] for r in run.metrics("train")]


def assert_loss_falls(run: launch.Finished) -> None:
    values = losses(run)
    assert all(math.isfinite(v) for v in values)
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    assert last < first - 1.0, values


def load_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def assert_same_weights(left: dict[str, Any], right: dict[str, Any], atol: float = 1e-5) -> None:
    import torch

    assert left.keys() == right.keys()
    for name in left:
        assert torch.allclose(left[name].float(), right[name].float(), atol=atol), name


# ----- the reference run (prompt-completion) ------------------------------------------------------


def test_reference_run_trains_evaluates_and_exports(reference_run: ReferenceRun) -> None:
    result = TrainerResult.model_validate(reference_run.result())
    assert (result.outcome, result.step, result.total_steps) == ("Succeeded", 60, 60), reference_run.log[-3000:]
    assert_loss_falls(reference_run)
    summary = result.evaluation
    assert summary and summary.base_model and summary.fine_tuned
    assert summary.fine_tuned.eval_loss < summary.base_model.eval_loss - 1.0
    assert summary.fine_tuned.exact_match is not None and summary.base_model.exact_match == 0.0
    assert [r["step"] for r in reference_run.metrics("eval")] == [0, 10, 20, 30, 40, 50, 60]
    termination = (reference_run.workdir / "termination-log").read_text()
    assert TrainerResult.model_validate_json(termination).outcome == "Succeeded"
    assert (
        ProgressSnapshot.model_validate_json((reference_run.workdir / "progress.json").read_text()).phase == "Finished"
    )


def test_export_loads_with_from_pretrained(reference_run: ReferenceRun) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output = reference_run.workdir / "output"
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.chat_template and model.config.num_hidden_layers == 2
    assert not list(output.parent.glob(".output.*")), "a temporary export folder was left behind"


def test_checkpoints_keep_the_newest(reference_run: ReferenceRun) -> None:
    checkpoints = reference_run.workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000056", "step-00000060"]
    assert (checkpoints / "latest").read_text().strip() == "step-00000060"
    assert not list(checkpoints.glob(".partial-*"))


def test_metrics_endpoint_carries_every_metric(reference_run: ReferenceRun) -> None:
    families = {f.name: f for f in text_string_to_metric_families(reference_run.metrics_text)}
    for name, (kind, plausible) in EXPECTED_METRICS.items():
        assert name in families, f"{name} missing from /metrics"
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == {"finetunejob", "namespace"}, sample
            assert sample.labels["finetunejob"] == "tiny" and sample.labels["namespace"] == "default"
        value = next(s.value for s in family.samples if not s.name.endswith(("_created", "_bucket", "_sum")))
        if plausible is not None:
            assert plausible(value), (name, value)
    histogram = {s.name: s.value for s in families["kubetune_step_duration_seconds"].samples if "le" not in s.labels}
    assert histogram["kubetune_step_duration_seconds_count"] == 60
    assert histogram["kubetune_step_duration_seconds_sum"] > 0
    assert ProgressSnapshot.model_validate(reference_run.progress).progress.step == 60


# ----- the other formats ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "overrides"),
    [
        ("text", {"dataset": {"packing": True, "maxSeqLength": 48}, "hyperparameters": {"epochs": 6}}),
        (
            "chat",
            {
                # LoRA on a random tiny model learns slowly: a higher rate and more epochs.
                "method": {
                    "type": "lora",
                    "lora": {"rank": 8, "alpha": 32, "dropout": 0.0, "targetModules": ALL_LINEAR},
                },
                "hyperparameters": {"learningRate": 3e-2, "epochs": 3},
            },
        ),
    ],
    ids=["text-packed", "chat-lora"],
)
def test_loss_falls_in_each_format(tmp_path: Path, tiny_model: Path, fmt: str, overrides: dict[str, Any]) -> None:
    train, validation = tiny.write_dataset(tmp_path / "data", fmt, train=128, validation=8)
    spec = deep_merge({"hyperparameters": {"epochs": 2, "learningRate": 5e-3}}, overrides)
    manifest = tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, spec)
    run = launch.run(manifest, tmp_path / "run")
    assert run.returncode == 0, run.log[-4000:]
    assert run.result()["outcome"] == "Succeeded"
    assert_loss_falls(run)
    report = json.loads((run.workdir / "data_report.json").read_text())
    if overrides.get("dataset", {}).get("packing"):
        assert report["sequences"] < report["train"]["examples"] / 3, "packing did not pack"
    from transformers import AutoModelForCausalLM

    # LoRA is merged: the export is a plain model, no adapter files.
    model = AutoModelForCausalLM.from_pretrained(run.workdir / "output")
    assert not (run.workdir / "output" / "adapter_config.json").exists() and model is not None


# ----- early stopping ---------------------------------------------------------------------------------


def test_overfitting_run_stops_early_and_exports_the_best(tmp_path: Path, tiny_model: Path) -> None:
    # 16 training words, 16 other validation words: nothing carries over, so validation loss soon rises.
    train, validation = tiny.write_dataset(tmp_path / "data", "prompt-completion", train=16, validation=16)
    overrides = {
        "hyperparameters": {"epochs": 40, "learningRate": 1e-2},
        "evaluation": {"everySteps": 2},
        "earlyStopping": {"metric": "evalLoss", "mode": "min", "patience": 3},
        "checkpointing": {"everySteps": 1000, "keep": 1},
    }
    manifest = tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, overrides)
    run = launch.run(manifest, tmp_path / "run")
    assert run.returncode == 0, run.log[-4000:]
    result = TrainerResult.model_validate(run.result())
    assert result.outcome == "EarlyStopped" and result.reason == ExitReason.EARLY_STOPPED.wire_name
    assert result.best_step is not None and result.step == result.best_step + 3 * 2 < result.total_steps
    evals = {r["step"]: r["eval_loss"] for r in run.metrics("eval")}
    assert result.best_metric == min(evals.values()) == evals[result.best_step]
    assert f"exported step {result.best_step}" in result.message
    # The best checkpoint is kept and named; the export holds its weights, not the last step's.
    best = run.workdir / "checkpoints" / f"step-{result.best_step:08d}"
    assert (run.workdir / "checkpoints" / "best").read_text().strip() == best.name
    import torch

    saved = torch.load(best / "ds" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    exported = load_weights(run.workdir / "output")
    assert_same_weights({k: v for k, v in saved.items() if k in exported}, exported)


# ----- kill and resume ------------------------------------------------------------------------------------


def newest_step(checkpoints: Path) -> int:
    latest = checkpoints / "latest"
    return int(latest.read_text().strip().removeprefix("step-")) if latest.exists() else 0


def test_killed_run_resumes_and_matches_the_uninterrupted_one(
    tmp_path: Path, reference_manifest: Path, reference_run: ReferenceRun
) -> None:
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    argv = launch.command(reference_manifest, workdir)
    env = launch.environment(**launch.trace_env(workdir))
    process, log = launch.start(argv, workdir, env)
    launch.wait_for_trainer(lambda: newest_step(checkpoints) >= 8, process, log)
    launch.kill_group(process, signal.SIGKILL)
    process.wait(timeout=30)
    killed_trace = launch.Finished(workdir, -9, "").trace()
    newest = newest_step(checkpoints)
    assert newest < 60, "the run finished before it could be killed"

    # Damage the newest checkpoint without changing its size (as a crash before the page cache reached the
    # disk does): only its manifest's SHA-256 tells, and the resumed run must fall back to the one before.
    model_states = checkpoints / f"step-{newest:08d}" / "ds" / "mp_rank_00_model_states.pt"
    damaged = bytearray(model_states.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    model_states.write_bytes(bytes(damaged))
    resumed_from = newest - 4

    shutil.move(str(log), str(log) + ".killed")
    process, log = launch.start(argv, workdir, env)
    process.wait(timeout=launch.RUN_TIMEOUT)
    run = launch.Finished(workdir, process.returncode, log.read_text())
    assert run.returncode == 0, run.log[-4000:]
    assert f"step-{newest:08d}" in run.log and "unusable" in run.log
    assert f"resumed from checkpoint step-{resumed_from:08d}" in run.log
    assert "mp_rank_00_model_states.pt does not match its SHA-256" in run.log
    skipped = f"resumed from step-{resumed_from:08d}: skipped step-{newest:08d}"
    assert skipped in run.result()["message"], "the result does not name the checkpoint it skipped"

    resumed_trace = run.trace()[len(killed_trace) :]
    assert resumed_trace[0]["step"] == resumed_from + 1, "did not resume at the checkpoint step"
    # What the final model saw: the killed run up to the checkpoint, then the resumed run.
    effective = [t for t in killed_trace if t["step"] <= resumed_from] + resumed_trace
    assert [t["step"] for t in effective] == list(range(1, 61))
    assert effective == reference_run.trace(), "the data order differs from the uninterrupted run"
    for epoch in (effective[:20], effective[20:40], effective[40:]):
        seen = Counter(e for t in epoch for e in t["examples"])
        assert max(seen.values()) == 1, "an example was seen twice in one epoch"

    assert_same_weights(load_weights(workdir / "output"), load_weights(reference_run.workdir / "output"))
    assert run.result()["step"] == 60


# ----- data errors ------------------------------------------------------------------------------------------


def test_leaky_dataset_fails_as_a_data_error_with_a_report(tmp_path: Path, tiny_model: Path) -> None:
    train, validation = tiny.write_dataset(tmp_path / "data", "chat", train=40, validation=10, duplicates=3, leaked=2)
    manifest = tiny.write_manifest(
        tmp_path / "job.yaml", tiny_model, train, validation, {"dataset": {"maxLeakageFraction": 0.1}}
    )
    run = launch.run(manifest, tmp_path / "run", processes=1)
    assert run.returncode == ExitReason.DATA_ERROR.exit_code, run.log[-4000:]
    result = TrainerResult.model_validate(run.result())
    assert (result.outcome, result.reason, result.retryable) == ("Failed", "DataError", False)
    assert "2 of 10 validation examples" in result.message and "validation.jsonl:1" in result.message
    report = (run.workdir / "data_report.md").read_text()
    assert "Exact duplicates in train: **3**" in report and "(leakage): **2**" in report
    assert not (run.workdir / "output").exists()


# ----- SIGTERM ----------------------------------------------------------------------------------------------


def test_sigterm_checkpoints_at_the_step_boundary_and_exits_interrupted(
    tmp_path: Path, reference_manifest: Path
) -> None:
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    process, log = launch.start(launch.command(reference_manifest, workdir), workdir, launch.environment())
    try:
        launch.wait_for_trainer(lambda: newest_step(checkpoints) >= 8, process, log)
        # As Kubernetes does on pod deletion: every rank's process gets SIGTERM.
        for pid in launch.descendants(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        launch.kill_group(process)
    text = log.read_text()
    result = TrainerResult.model_validate(launch.Finished(workdir, process.returncode, text).result())
    assert (result.outcome, result.reason, result.retryable) == ("Interrupted", "Interrupted", True), text[-4000:]
    assert "(exitcode: 8)" in text, "the ranks did not exit with ExitReason.INTERRUPTED's code"
    assert 8 <= result.step < 60
    assert newest_step(checkpoints) == result.step, "the checkpoint is not at the step where it stopped"
    assert not (workdir / "output").exists()
