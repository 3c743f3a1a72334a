"""`python -m bench` (`make bench`): run the CPU benchmarks, write docs/benchmarks.md and the README table.

Parts: `trainer` (kubetune vs transformers' Trainer), `operator` (scale against the emulated API
server), `operator_real` (scale against the real control plane, `make controlplane`; alone, it rewrites
only its own section, README table and docs/benchmarks-operator-real.json), `overheads` (metrics,
progress, checkpoints; needs `trainer`). `--quick` runs every code path
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

from bench import machine, report, report_smol, trainers, workload

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("trainer", "operator", "operator_real", "overheads")
OPERATOR_REAL_JSON = ROOT / "docs" / "benchmarks-operator-real.json"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every code path")
    parser.add_argument(
        "--profile",
        choices=("cpu", "smol"),
        default="cpu",
        help="cpu: the whole benchmark; smol: the trainer comparison (part `trainer`) and the LM head + loss "
        "alone (part `loss`) on SmolLM2-135M's shape, written to docs/benchmarks-smol.json and its section of --out",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the Markdown report")
    parser.add_argument("--results", type=Path, help="also write the raw results as JSON here")
    parser.add_argument(
        "--readme",
        type=Path,
        help="README whose Performance table to update (default: none with --quick, ./README.md otherwise)",
    )
    parser.add_argument(
        "--operator-tree",
        type=Path,
        help="operator_real: also measure the operator of this other checkout (a baseline, e.g. a `git worktree`)",
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
    profile = workload.QUICK if args.quick else workload.PROFILES[args.profile]
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
    if "operator_real" in parts:
        results["operator_real"] = operator_real(args, work / "operator-real")
    if "overheads" in parts:
        from bench import overheads

        _say("overheads:")
        results["overheads"] = overheads.measure(profile, runs, work / "overheads")
        _say(f"  checkpoint save median {results['overheads']['checkpoint']['save_seconds_median']:.2f} s")
    results["machine"]["load_at_end"] = machine.load()
    results["seconds"] = time.monotonic() - began
    return results


def operator_real(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The real control plane's figures (bench.operator_real), with a baseline when --operator-tree is given;
    written to docs/benchmarks-operator-real.json (not with --quick)."""
    import asyncio

    from bench import operator_real as real

    milestones, steady, restarts, burst = ((20, 40), 5.0, 5, 10) if args.quick else ((100, 500, 1000), 30.0, 100, 100)
    results: dict[str, Any] = {"machine_line": report.machine_line(machine.describe())}
    _say("operator on the real control plane:")
    results["run"] = asyncio.run(real.measure(milestones, 20.0, steady, restarts, burst, work / "now", progress=_say))
    if args.operator_tree is not None:
        _say(f"  the baseline operator from {args.operator_tree}:")
        baseline = asyncio.run(
            real.measure(milestones, 20.0, steady, restarts, 0, work / "before", args.operator_tree, _say)
        )
        results["baseline"] = baseline | {"tree_label": args.operator_tree.name}
    if not args.quick:
        OPERATOR_REAL_JSON.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main_operator_real(args: argparse.Namespace) -> int:
    """`--parts operator_real` alone: its section of --out, its README table and its JSON, nothing else."""
    from bench import report_operator

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        results = operator_real(args, args.work or Path(tmp))
    if not report.replace_block(args.out, report_operator.SECTION_START, report_operator.SECTION_END,
                                report_operator.section(results)):  # fmt: skip
        _say(f"{args.out}: no {report_operator.SECTION_START!r} marker; the section was not written")
    readme = args.readme or (None if args.quick else ROOT / "README.md")
    if readme is not None and not report.replace_block(
        readme, report_operator.README_START, report_operator.README_END, report_operator.readme_table(results)
    ):
        _say(f"{readme}: no {report_operator.README_START!r} marker; table not written")
    return 0


def main_smol(args: argparse.Namespace) -> int:
    """The SmolLM2-shaped measurements: the trainer comparison (part `trainer`) and the LM head + loss
    alone (part `loss`, `bench.loss_head`), into docs/benchmarks-smol.json (a part not run keeps its
    earlier figures) and the smol section of the report, nothing else."""
    asked = {p.strip() for p in args.parts.split(",")}
    parts = asked & {"trainer", "loss"} if asked != set(PARTS) else {"trainer", "loss"}
    path = ROOT / "docs" / "benchmarks-smol.json"
    results: dict[str, Any] = report.load_results(path) or {}
    if "trainer" in parts:
        with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
            results |= run(argparse.Namespace(**{**vars(args), "parts": "trainer"}), args.work or Path(tmp))
    if "loss" in parts:
        from bench import loss_head

        size, profile = workload.SMOL.model, workload.SMOL
        _say("LM head + loss alone:")
        measured = loss_head.measure(profile.micro_batch * profile.seq_length, size.hidden, size.vocab or 0)
        results["loss_head"] = {**measured, "machine": machine.describe()}
        _say(f"  {json.dumps(measured)}")
    path.write_text(json.dumps(results, indent=2) + "\n")
    if args.results:
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    if not report.replace_block(args.out, report.SMOL_START, report.SMOL_END, report_smol.smol_section(results)):
        _say(f"{args.out}: no {report.SMOL_START!r} marker; run `make bench` once to write the section")
    _say(f"smol: wrote {path.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.profile == "smol" and not args.quick:
        return main_smol(args)
    if {p.strip() for p in args.parts.split(",")} == {"operator_real"}:
        return main_operator_real(args)
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        work = args.work or Path(tmp)
        results = run(args, work)
    gpu = report.load_gpu(ROOT / "docs" / "benchmarks-gpu.json")
    smol = report.load_results(ROOT / "docs" / "benchmarks-smol.json")
    if "operator_real" not in results and (earlier := report.load_results(OPERATOR_REAL_JSON)) is not None:
        results["operator_real"] = earlier
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.render(results, gpu, smol))
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
