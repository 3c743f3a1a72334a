"""The human-readable results of a local run: `loss.png` and `report.md`.

Both are rebuilt from files the run already wrote (`metrics.jsonl`, `events.jsonl`, `status.json`,
`data_report.md`), so they can be regenerated at any time and never disagree with the raw figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from kubetune.api.status import ApproachResult, ConditionType, EvaluationResult, FineTuneJobStatus
from kubetune.local.workdir import Workdir


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a torn last line (a rank killed mid-write) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None and r.get("step") is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_losses(workdir: Workdir, status: FineTuneJobStatus) -> None:
    """Train and eval loss against step; the early-stopping (best) step and gang restarts marked."""
    records = read_jsonl(workdir.metrics)
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    plotted: list[float] = []
    for key, label in (("train_loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = _series(records, key)
        plotted += values
        if steps:
            axes.plot(steps, values, marker="o" if key == "eval_loss" else None, markersize=3, label=label)
    best_step = status.metrics.best_step if status.metrics else None
    early = any(c.type == ConditionType.EARLY_STOPPED and c.status == "True" for c in status.conditions)
    if best_step is not None:
        axes.axvline(
            best_step,
            color="green",
            linestyle="--",
            label=f"best step {best_step}" + (" (early stop)" if early else ""),
        )
    for event in read_jsonl(workdir.root / "events.jsonl"):
        if event.get("event") == "restart" and event.get("step") is not None:
            axes.axvline(event["step"], color="red", linestyle=":", label=f"restart (attempt {event['attempt']})")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    if plotted and all(v > 0 for v in plotted):
        axes.set_yscale("log")  # fine-tuning losses span orders of magnitude
        axes.set_ylabel("loss (log scale)")
    axes.set_title("kubetune: training and validation loss")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    temporary = workdir.plot.with_suffix(".tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    temporary.replace(workdir.plot)


def _cell(value: float | int | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.4g}"


def evaluation_table(base: EvaluationResult | None, tuned: EvaluationResult | None) -> list[str]:
    rows = [("base model", base), ("fine-tuned", tuned)]
    lines = [
        "| model | eval loss | perplexity | token accuracy | exact match | examples |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in rows:
        if result is None:
            continue
        lines.append(
            f"| {name} | {_cell(result.eval_loss)} | {_cell(result.perplexity)} | "
            f"{_cell(result.token_accuracy, True)} | {_cell(result.exact_match, True)} | {_cell(result.examples)} |"
        )
    return lines


def _millions(count: int | None) -> str:
    return "-" if count is None else f"{count / 1e6:.1f} M"


def approaches_table(rows: list[ApproachResult]) -> list[str]:
    """Every approach on the same validation set: quality, latency, speed, size."""
    lines = [
        "| approach | exact match | eval loss | token accuracy | latency (s/answer) | generated tokens/s | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {_cell(row.exact_match, True)} | {_cell(row.eval_loss)} | {_cell(row.token_accuracy, True)} | "
            f"{_cell(row.latency_seconds)} | {_cell(row.tokens_per_second)} | {_millions(row.parameters)} |"
        )
    return lines


def write_report(workdir: Workdir, status: FineTuneJobStatus, wall_seconds: float) -> None:
    """report.md: outcome, evaluation (base vs fine-tuned), time and throughput, the data report."""
    condition = next((c for c in status.conditions if c.type == status.phase), None)
    early = next((c for c in status.conditions if c.type == ConditionType.EARLY_STOPPED and c.status == "True"), None)
    metrics, progress = status.metrics, status.progress
    lines = [
        f"# kubetune run: {status.phase}",
        "",
        f"- **Outcome**: {status.phase}" + (f" ({condition.reason}): {condition.message}" if condition else ""),
    ]
    if early is not None:
        lines.append(f"- **Early stopping**: {early.message}")
    signs = (ConditionType.OVERFITTING_SUSPECTED, ConditionType.UNDERFITTING_SUSPECTED)
    for fit in (c for c in status.conditions if c.type in signs and c.status == "True"):
        lines.append(f"- **{fit.type}**: {fit.message}")
    lines += [
        f"- **Steps**: {progress.step if progress else 0} of {progress.total_steps if progress else '?'}",
        f"- **Restarts**: {status.restarts} (attempts: {status.attempt})",
        f"- **Wall time**: {wall_seconds:.0f} s",
        f"- **Throughput**: {_cell(metrics.tokens_per_second if metrics else None)} tokens/s (non-padding, all ranks)",
        f"- **Best eval loss**: {_cell(metrics.best_eval_loss if metrics else None)} at step "
        f"{metrics.best_step if metrics and metrics.best_step is not None else '-'}",
        f"- **Model**: {status.output.path if status.output else 'not exported'}",
        "",
        "![loss](loss.png)",
        "",
    ]
    evaluation = status.evaluation
    if evaluation is not None and evaluation.approaches:
        lines += ["## Was fine-tuning worth it? (validation set)", "", f"**{evaluation.verdict}**", ""]
        lines += approaches_table(evaluation.approaches)
        lines.append("")
    elif evaluation is not None and (evaluation.base_model or evaluation.fine_tuned):
        lines += ["## Base model vs fine-tuned (validation set)", ""]
        lines += evaluation_table(evaluation.base_model, evaluation.fine_tuned)
        lines.append("")
    if workdir.data_report.exists():
        body = workdir.data_report.read_text().strip().removeprefix("# Data report").strip()
        lines += ["## Data report", "", body, ""]
    temporary = workdir.report.with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(workdir.report)
