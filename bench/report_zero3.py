"""The ZeRO-3 loading figures (bench/zero3_loading.py) as a section of docs/benchmarks.md, rendered by
`make bench` from docs/benchmarks-zero3-loading.json (written by
`python -m bench.zero3_loading --write`)."""

from __future__ import annotations

from typing import Any


def _mb(value: float) -> str:
    return f"{value / 1e6:.0f} MB"


def section(results: dict[str, Any]) -> list[str]:
    z2, z3 = results["zero2"], results["zero3"]
    return [
        "## 1c. ZeRO-3 loading: host memory per rank (`python -m bench.zero3_loading`)",
        "",
        f"Measured on {results['machine']} (CPU, DS_ACCELERATOR=cpu, 2 ranks, fp32): the trainer's own loading path on SmolLM2-135M's "
        "shape (random weights, 0.54 GB in fp32), once under ZeRO-2 and once under ZeRO-3 (transformers' "
        "`HfDeepSpeedConfig`, so `from_pretrained` runs inside `deepspeed.zero.Init`). Rises over each rank's "
        "resident memory just before loading; the larger of the two ranks.",
        "",
        "| stage | parameter elements held per rank | peak rise while loading | resident rise once loaded |",
        "|---|---|---|---|",
        f"| ZeRO-2 | {z2['local_elements'][0]:,} | {_mb(z2['peak_rise_bytes_per_rank'])} | "
        f"{_mb(z2['resident_rise_bytes_per_rank'])} |",
        f"| ZeRO-3 | {z3['local_elements'][0]:,} | {_mb(z3['peak_rise_bytes_per_rank'])} | "
        f"{_mb(z3['resident_rise_bytes_per_rank'])} |",
        "",
        "What it shows: under ZeRO-3 each rank holds half the parameters as soon as the model is loaded (the "
        "point on GPUs: no device ever holds the whole model). In host memory on the CPU it is the other way "
        "round: ZeRO-2's resident rise is below the 538 MB its parameters take, so its fp32 weights evidently stay "
        "memory-mapped from the safetensors file (page cache, counted only where touched), while under ZeRO-3 "
        "every rank reads the whole checkpoint to "
        f"copy out its shard, so its peak is {results['peak_rise_bytes_per_rank_ratio']:.1f}x ZeRO-2's. "
        "Host memory per pod is not what ZeRO-3 saves; device memory is, and that needs the GPU run.",
        "",
    ]
