"""The GPU comparison (run by bench/gpu.sh): kubetune vs transformers' Trainer on one accelerator.

The same code as the CPU benchmark (`bench.trainers`: same manifests, same alternation, same
reduction), with the `GPU` profile: a 0.9 B-parameter Llama built from a config, bf16, sequence 2048,
ZeRO-2, uniform-length data. Added here: peak accelerator memory (kubetune's own
`kubetune_gpu_memory_peak_bytes` gauge; the baseline's `torch.cuda.max_memory_allocated`) and MFU
(`bench.flops`). Prints a table and writes docs/benchmarks-gpu.json, which `make bench` renders into
docs/benchmarks.md and the README.

`--profile quick` runs the same path with tiny sizes (on the CPU when there is no GPU): a dry run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import flops, machine, trainers, workload

ROOT = Path(__file__).resolve().parent.parent


def device_name(profile: workload.Profile) -> str:
    import torch

    if profile.accelerator == "cpu" or not torch.cuda.is_available():
        return "cpu (dry run)"
    return str(torch.cuda.get_device_name(0))


def summary_with_mfu(profile: workload.Profile, runs: list[trainers.Run], device: str, vocab: int) -> dict[str, Any]:
    from kubetune.trainer.metrics import peak_flops

    peak = peak_flops(device)
    table = trainers.summarise(runs)["uniform"]
    out = {}
    for side in trainers.SIDES:
        row = table[side]
        per_device = row["tokens_per_second"] / profile.processes
        row["mfu"] = flops.mfu(per_device, profile.model, vocab, profile.seq_length, peak) if peak else 0.0
        out[side] = row
    return out


def zero3_run(profile: workload.Profile, work: Path) -> trainers.Run:
    """kubetune once more on the uniform data under ZeRO-3 (loaded into shards, parameters partitioned)."""
    manifest = work / "uniform-zero3.yaml"
    document = yaml.safe_load((work / "uniform.yaml").read_text())
    document["spec"].setdefault("distributed", {})["zeroStage"] = 3
    manifest.write_text(yaml.safe_dump(document))
    folder = work / "uniform-kubetune-zero3"
    folder.mkdir(parents=True, exist_ok=True)
    run = trainers.run_kubetune(profile, manifest, folder, trainers.environment(profile, work), 300)
    print(f"  uniform  kubetune ZeRO-3: {run.tokens_per_second:9.0f} tokens/s, step {run.step_seconds * 1000:7.1f} ms")
    return run


def zero3_row(profile: workload.Profile, run: trainers.Run, device: str, vocab: int) -> dict[str, Any]:
    from kubetune.trainer.metrics import peak_flops

    peak = peak_flops(device)
    per_device = run.tokens_per_second / profile.processes
    return {
        "tokens_per_second": run.tokens_per_second,
        "step_seconds": run.step_seconds,
        "runs": 1,
        "peak_memory_bytes": run.peak_memory_bytes,
        "peak_rss_bytes": run.peak_rss_bytes,
        "mfu": flops.mfu(per_device, profile.model, vocab, profile.seq_length, peak) if peak else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="gpu", choices=sorted(workload.PROFILES))
    parser.add_argument(
        "--out", type=Path, help="results file (default: docs/benchmarks-gpu.json, with the gpu profile only)"
    )
    parser.add_argument("--work", type=Path, help="folder for the model, data and logs (default: temp)")
    args = parser.parse_args(argv)
    profile = workload.PROFILES[args.profile]
    if profile.name != "gpu":
        profile = dataclasses.replace(profile, datasets=("uniform",))
    device = device_name(profile)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-gpu-") as tmp:
        work = args.work or Path(tmp)
        runs = trainers.compare(profile, work, timeout=300, progress=lambda line: print(line, flush=True))
        vocab = profile.model.vocab or json.loads((work / "model" / "config.json").read_text())["vocab_size"]
        zero3 = zero3_run(profile, work)
    summary = summary_with_mfu(profile, runs, device, vocab)
    summary["kubetune-zero3"] = zero3_row(profile, zero3, device, vocab)
    result = {
        "device": device,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": workload.describe(profile),
        "mfu_formula": flops.FORMULA,
        "flops_per_token": flops.flops_per_token(profile.model, vocab, profile.seq_length),
        "summary": summary,
        "runs": trainers.as_records(runs),
        "seconds": round(time.monotonic() - began, 1),
        "python": sys.version.split()[0],
        "versions": machine.versions(),
    }
    print(f"\n{device}: {profile.model} seq {profile.seq_length} {profile.precision}")
    print(f"{'trainer':14s} {'tokens/s':>10s} {'step ms':>9s} {'peak GiB':>9s} {'MFU':>7s}")
    for side, row in summary.items():
        peak = (row["peak_memory_bytes"] or 0) / 2**30
        print(
            f"{side:14s} {row['tokens_per_second']:10.0f} {row['step_seconds'] * 1000:9.1f} {peak:9.2f} "
            f"{row['mfu'] * 100:6.1f}%"
        )
    ratio = summary["kubetune"]["tokens_per_second"] / summary["transformers"]["tokens_per_second"]
    print(f"ratio kubetune / transformers tokens/s: {ratio:.2f}x ({result['seconds']:.0f} s)")
    out = args.out or (ROOT / "docs" / "benchmarks-gpu.json" if profile.name == "gpu" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
