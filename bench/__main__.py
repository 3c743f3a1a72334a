"""`python -m bench` (`make bench`): run the CPU benchmarks, write docs/benchmarks.md and the README table.

Parts: `trainer` (kubetune vs transformers' Trainer), `operator` (scale against the emulated API
server), `overheads` (metrics, progress, checkpoints; needs `trainer`). `--quick` runs every code path
with tiny sizes in about a minute and writes nothing outside `--out` unless asked (the smoke test uses
it). The GPU part is `bench/gpu.sh`; its results, when there are any, are read from
docs/benchmarks-gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine, report, trainers, workload

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("trainer", "operator", "overheads")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every code path")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the Markdown report")
    parser.add_argument("--results", type=Path, help="also write the raw results as JSON here")
    parser.add_argument(
        "--readme",
        type=Path,
        help="README whose Performance table to update (default: none with --quick, ./README.md otherwise)",
    )
    parser.add_argument("--work", type=Path, help="folder for models, data and run logs (default: a temp folder)")
    return parser.parse_args(argv)


def _say(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    profile = workload.QUICK if args.quick else workload.CPU
    results: dict[str, Any] = {
        "quick": args.quick,
        "profile": workload.describe(profile),
        "machine": machine.describe(),
    }
    began = time.monotonic()
    _say(f"kubetune benchmarks ({profile.name}); load {results['machine']['load_at_start']}")
    runs: list[trainers.Run] = []
    if "trainer" in parts or "overheads" in parts:
        _say("trainer comparison:")
        runs = trainers.compare(profile, work / "trainer", progress=_say)
        results["trainer"] = {"summary": trainers.summarise(runs), "runs": trainers.as_records(runs)}
        results["parameters"] = next((r.parameters for r in runs if r.parameters), None)
    if "operator" in parts:
        from bench import operator_scale

        _say("operator scale:")
        scales = (10, 20) if args.quick else (100, 500, 1000)
        steady, restarts, life = (3.0, 5, 3) if args.quick else (20.0, 100, 20)
        results["operator"] = operator_scale.run(scales, steady, restarts, life, progress=_say)
    if "overheads" in parts:
        from bench import overheads

        _say("overheads:")
        results["overheads"] = overheads.measure(profile, runs, work / "overheads")
        _say(f"  checkpoint save median {results['overheads']['checkpoint']['save_seconds_median']:.2f} s")
    results["machine"]["load_at_end"] = machine.load()
    results["seconds"] = time.monotonic() - began
    return results


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        work = args.work or Path(tmp)
        results = run(args, work)
    gpu = report.load_gpu(ROOT / "docs" / "benchmarks-gpu.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.render(results, gpu))
    if args.results:
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    readme = args.readme or (None if args.quick else ROOT / "README.md")
    complete = all(part in results for part in PARTS)
    if readme is not None and complete and not report.update_readme(readme, report.readme_table(results, gpu)):
        _say(f"{readme}: no {report.README_START!r} marker; table not written")
    _say(f"wrote {args.out} in {results['seconds']:.0f} s; load {results['machine']['load_at_end']} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
