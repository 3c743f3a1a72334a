"""`make bench-restart`: bench/restart_real.py's measurement on the real node, with the quickstart's model
(SmolLM2-135M from its GGUF file) and data, two workers of one rank each: time to the first step and
failure to the next step, median of `KUBETUNE_RESTART_BENCH_RUNS` runs (default 5). Skipped unless
`KUBETUNE_RESTART_BENCH` names the Markdown report to write (docs/benchmarks.md); the figures go to
docs/benchmarks-restart.json. The killed-rank scenario in test_training.py checks the same breakdowns
on every `make test`, with the tiny model."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bench import machine, report
from bench.restart_real import JobWatcher, breakdown_to_first_step, breakdown_to_next_step, marks_of, summarize, write
from tests.e2e.realnode.cluster import JOBS
from tests.e2e.realnode.jobs import Inputs, rank_processes
from tests.support.builders import a_job
from tests.support.kubeapi import KubeApi
from tests.support.realnode import RealNode
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[3]
REPORT = os.environ.get("KUBETUNE_RESTART_BENCH")
RUNS = int(os.environ.get("KUBETUNE_RESTART_BENCH_RUNS", "5"))
GGUF = ROOT / ".cache" / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "qs"

pytestmark = [
    pytest.mark.skipif(not REPORT, reason="a benchmark: `make bench-restart` runs it (KUBETUNE_RESTART_BENCH)"),
    pytest.mark.timeout(600 + 600 * RUNS),
]

#: The quickstart's spec (examples/quickstart.yaml) on two workers, without what only the first attempt
#: does (base model and baselines: a first start-up, not a recovery, and minutes of generation).
SPEC: dict[str, Any] = {
    "dataset": {"format": "chat", "maxSeqLength": 128},
    "method": {"type": "full"},
    "hyperparameters": {"epochs": 3, "learningRate": 1.0e-4, "microBatchSize": 4, "seed": 7},
    "distributed": {"workers": 2, "processesPerWorker": 1, "accelerator": "cpu", "zeroStage": 2, "precision": "fp32"},
    "checkpointing": {"everySteps": 2, "keep": 1, "gracePeriodSeconds": 30},
    "retryPolicy": {"backoffSeconds": 0},
    "resources": {"requests": {"cpu": "400m", "memory": "1Gi"}},
}


def quickstart_on_claim(inputs: Inputs) -> dict[str, str]:
    """The GGUF file and the quickstart's data in the `data` claim's folder."""
    folder = inputs.folder / "quickstart"
    (folder / "model").mkdir(parents=True, exist_ok=True)
    if not (folder / "model" / GGUF.name).exists():
        shutil.copy(GGUF, folder / "model" / GGUF.name)
    for split in ("train", "validation"):
        shutil.copy(ROOT / "examples" / "data" / f"{split}.jsonl", folder / f"{split}.jsonl")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {"model": "pvc://data/quickstart/model", "train": "pvc://data/quickstart/train.jsonl",
            "validation": "pvc://data/quickstart/validation.jsonl"}  # fmt: skip


def one_run(submit: Any, real_node: RealNode, admin: KubeApi, paths: dict[str, str], index: int) -> dict[str, Any]:
    namespace = f"rn-bench-{index}"
    job_spec = (
        a_job(NAME).spec(SPEC).model(paths["model"], gguf_file=GGUF.name).train(paths["train"])
        .validation(paths["validation"]).storage(f"pvc://ckpt/{NAME}")
    )  # fmt: skip
    applied = time.time()
    job = submit(namespace, job_spec)
    with JobWatcher(job.pods, lambda: job.status().get("phase"), NAME, workers=2) as watcher:
        first = eventually(lambda: marks_of(job.log(f"{NAME}-a1-w0"), 1), 600, message=f"first step\n{job.logs()}")
        eventually(job.steps_saved, 300, interval=0.2, message=f"a checkpoint\n{job.logs()}")
        (rank,) = rank_processes(real_node, namespace, f"{NAME}-a1-w1")
        killed = time.time()
        os.kill(rank, signal.SIGKILL)
        second = eventually(lambda: marks_of(job.log(f"{NAME}-a2-w0"), 2), 600, message=f"attempt 2\n{job.logs()}")
    admin.delete(JOBS, namespace, NAME)
    eventually(lambda: not job.pods(), 120, message="the run's pods gone")
    shutil.rmtree(job.checkpoints, ignore_errors=True)  # 2-3 GB a run: five would fill the disk
    return {
        "first_step": breakdown_to_first_step(applied, watcher.seen, first),
        "next_step": breakdown_to_next_step(killed, watcher.seen, second),
    }


def test_restart_bench(submit: Any, inputs: Inputs, real_node: RealNode, admin: KubeApi) -> None:
    assert REPORT and GGUF.exists(), f"{GGUF} is missing: `make bench-restart` fetches it first"
    paths = quickstart_on_claim(inputs)
    runs = [one_run(submit, real_node, admin, paths, index) for index in range(RUNS)]
    results = {
        "machine_line": report.machine_line(machine.describe()) + ".",
        "job_line": "The quickstart's model (SmolLM2-135M, GGUF de-quantized at load) and data, two workers of one "
        "rank each (ZeRO-2, fp32, micro-batch 4), the operator in-cluster, pods on the real node's kubelet.",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "path": "recreate (every pod of the gang deleted and created again)",
        "runs": runs,
        "first_step": summarize(runs, "first_step"),
        "next_step": summarize(runs, "next_step"),
        "label": os.environ.get("KUBETUNE_RESTART_BENCH_LABEL", "this commit"),
        "notes": os.environ.get("KUBETUNE_RESTART_BENCH_NOTES", ""),
    }
    baseline = ROOT / "docs" / "benchmarks-restart-baseline.json"
    before = json.loads(baseline.read_text()) if baseline.exists() else None
    write(results, Path(REPORT), ROOT / "docs" / "benchmarks-restart.json", before)
    assert results["next_step"]["median"] > 0
