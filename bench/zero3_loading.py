"""Host memory of loading a model on 2 ranks: ZeRO-2 (every rank builds the whole model) against ZeRO-3
(transformers loads straight into shards inside `deepspeed.zero.Init`, kubetune.trainer.zero3).

Each stage runs the trainer's own loading path (`ShardedLoading` + `load_model`) in 2 CPU processes under
torchrun, on SmolLM2-135M's shape with random weights (fp32: 0.54 GB of parameters). Each rank reports
its resident memory just before loading, its peak while loading (ru_maxrss) and its resident memory
once loaded; the figures are the rises over the first, per rank (what a pod of P ranks multiplies by
P), and the parameter elements each rank holds.

`python -m bench.zero3_loading` prints the figures and their ratios (a measurement, not a test);
`--write` also stores them in docs/benchmarks-zero3-loading.json, which `make bench` renders.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from bench import workload

ROOT = Path(__file__).resolve().parent.parent


def rank_program(model: str, stage: int, out: str) -> None:
    """One rank: load the model the way the trainer does; write this rank's memory figures."""
    import torch
    import torch.distributed as dist

    from kubetune.trainer import distributed, engine
    from kubetune.trainer.model import load_model
    from kubetune.trainer.zero3 import ShardedLoading
    from tests.support.builders import a_job

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    distributed.initialize("cpu")  # as the trainer joins: DeepSpeed's communication backend on gloo
    job = a_job().model(model).distributed(zero_stage=stage).processes(2).accelerator("cpu").to_job()
    before = psutil.Process().memory_info().rss
    sharding = ShardedLoading(engine.deepspeed_config(job.spec, dist.get_world_size()), stage)
    loaded = load_model(job.spec, Path(model).parent, torch.float32)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gc.collect()
    after = psutil.Process().memory_info().rss
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in loaded.parameters())
    record = {"rank": dist.get_rank(), "rss_before": before, "peak": peak, "rss_after": after, "local_elements": local}
    Path(out, f"rank-{dist.get_rank()}.json").write_text(json.dumps(record))
    del sharding
    distributed.shutdown()


def measure(work: Path) -> dict[str, Any]:
    model = workload.build_model(work / "model", workload.SMOL.model)
    results: dict[str, Any] = {"model": str(workload.SMOL.model)}
    for stage in (2, 3):
        out = work / f"stage-{stage}"
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "bench.zero3_loading", "--rank", str(model), str(stage), str(out)]  # fmt: skip
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"ZeRO-{stage} loading failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
        results[f"zero{stage}"] = {
            "peak_rise_bytes_per_rank": max(r["peak"] - r["rss_before"] for r in ranks),
            "resident_rise_bytes_per_rank": max(r["rss_after"] - r["rss_before"] for r in ranks),
            "local_elements": [r["local_elements"] for r in ranks],
        }
    for figure in ("peak_rise_bytes_per_rank", "resident_rise_bytes_per_rank"):
        results[f"{figure}_ratio"] = results["zero3"][figure] / results["zero2"][figure]
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank"]:
        rank_program(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        from bench import machine, report

        with tempfile.TemporaryDirectory(prefix="kubetune-zero3-") as tmp:
            measured = measure(Path(tmp))
        described = machine.describe()
        measured |= {"measured": described.get("date", ""), "machine": report.machine_line(described)}
        print(json.dumps(measured, indent=2))
        if "--write" in sys.argv:  # for docs/benchmarks.md (bench/report_zero3.py renders it)
            (ROOT / "docs" / "benchmarks-zero3-loading.json").write_text(json.dumps(measured, indent=2) + "\n")
