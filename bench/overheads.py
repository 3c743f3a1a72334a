"""What observability costs a training run: metrics and progress per step, checkpoints per run.

Three measurements, two of them from real training runs:

- out of step (real runs): kubetune times each step itself (`step_seconds` in metrics.jsonl, from
  the first forward to the end of the step's all-reduce) and stamps each record after the step's
  metrics are written. The mean gap between the two per step is everything the loop does besides
  training: the Prometheus recorders, metrics.jsonl, progress.json, the /progress snapshot, the
  grad-norm read and the loop's own checks. It is an upper bound of the exporter's and progress
  reporting's cost;
- per call (micro-benchmark): the same recorder calls the loop makes after each step
  (`TrainerMetrics.record_step` / `record_progress`, `Recorder.log_metrics` / `publish`), timed
  over many iterations, and the cost of serving one /metrics scrape and one /progress request;
- checkpoints (a real run saving every few steps): each save's wall time from kubetune's log, and
  its share of wall time at the default interval (checkpointing.everySteps = 100):
  save / (100 x step time + save).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import stats, trainers, workload

DEFAULT_CHECKPOINT_INTERVAL = 100
"""checkpointing.everySteps' default (kubetune.api.operations.CheckpointingSpec)."""


def recorder_calls(iterations: int = 2000) -> dict[str, float]:
    """Seconds per step of the loop's recorder calls, and per scrape of /metrics and /progress."""
    from prometheus_client import generate_latest

    from kubetune.api.status import Progress
    from kubetune.trainer.metrics import TrainerMetrics
    from kubetune.trainer.outputs import Recorder

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-recorder-") as folder:
        metrics = TrainerMetrics("bench", "default")
        recorder = Recorder(Path(folder), enabled=True)
        began = time.perf_counter()
        for step in range(1, iterations + 1):
            metrics.record_step(2.5, 1e-4, 1.0, step / iterations, 4096, 0.25)
            metrics.record_progress(step / iterations, 100.0)
            record = {"kind": "train", "step": step, "epoch": 0.5, "train_loss": 2.5, "lr": 1e-4, "grad_norm": 1.0}
            recorder.log_metrics(record | {"tokens": 4096, "step_seconds": 0.25, "tokens_per_second": 16384.0})
            progress = Progress(step=step, total_steps=iterations, epoch=0.5, percent=50, eta_seconds=100)
            latest = recorder.snapshot.metrics.model_copy(update={"train_loss": 2.5, "tokens_per_second": 16384.0})
            recorder.publish(progress=progress, metrics=latest)
        per_step = (time.perf_counter() - began) / iterations
        began = time.perf_counter()
        for _ in range(200):
            generate_latest(metrics.registry)
            recorder.progress_json()
        per_scrape = (time.perf_counter() - began) / 200
    return {"per_step_seconds": per_step, "per_scrape_seconds": per_scrape}


def from_runs(runs: list[trainers.Run]) -> dict[str, Any]:
    """Out-of-step time of kubetune's comparison runs, as a share of their step cycle."""
    shares = [
        r.out_of_step_seconds / (r.tokens_measured / r.tokens_per_second / r.steps_measured)
        for r in runs
        if r.side == "kubetune" and r.out_of_step_seconds is not None and r.tokens_per_second > 0
    ]
    seconds = [r.out_of_step_seconds for r in runs if r.side == "kubetune" and r.out_of_step_seconds is not None]
    return {"out_of_step_seconds_median": stats.median(seconds), "out_of_step_share_median": stats.median(shares)}


def checkpoint_run(profile: workload.Profile, folder: Path, every: int = 5, timeout: float = 600.0) -> dict[str, Any]:
    """One kubetune run on the uniform data saving every `every` steps."""
    profile = dataclasses.replace(
        profile, datasets=("uniform",), extra_spec={"checkpointing": {"everySteps": every, "keep": 2}}
    )
    manifests = trainers.prepare(profile, folder)
    run_folder = folder / "checkpointing"
    run_folder.mkdir(parents=True, exist_ok=True)
    env = trainers.environment(profile, folder)
    run = trainers.run_kubetune(profile, manifests["uniform"], run_folder, env, timeout)
    save = stats.median(run.checkpoint_seconds)
    step_cycle = run.tokens_measured / run.tokens_per_second / run.steps_measured
    interval = DEFAULT_CHECKPOINT_INTERVAL
    return {
        "every_steps": every,
        "saves": len(run.checkpoint_seconds),
        "save_seconds": run.checkpoint_seconds,
        "save_seconds_median": save,
        "step_seconds": step_cycle,
        "share_at_default_interval": save / (interval * step_cycle + save),
        "share_in_this_run": sum(run.checkpoint_seconds) / run.process_seconds,
        "process_seconds": run.process_seconds,
    }


def measure(profile: workload.Profile, runs: list[trainers.Run], folder: Path) -> dict[str, Any]:
    return {
        "recorder": recorder_calls(),
        "runs": from_runs(runs),
        "checkpoint": checkpoint_run(profile, folder),
    }
