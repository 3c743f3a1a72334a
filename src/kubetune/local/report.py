"""The human-readable results of a local run: `loss.png` and `report.md`.

report.md is the report `kubetune status` prints for a job in a cluster (`kubetune.view.report`), in
Markdown. Both are rebuilt from files the run already wrote (`metrics.jsonl`, `events.jsonl`, `status.json`,
`data_report.md`), so they can be regenerated at any time and never disagree with the raw figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from kubetune.api.status import ConditionType, FineTuneJobStatus
from kubetune.local.workdir import Workdir
from kubetune.view.chart import LossSeries
from kubetune.view.report import JobReport, report_lines


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
    """(steps, values) of `key`; evaluations on the test set (the base model's, scored for the verdict) are
    left out: the eval curve is the validation set's."""
    points = [
        (r["step"], r[key])
        for r in records
        if r.get(key) is not None and r.get("step") is not None and r.get("set", "validation") == "validation"
    ]
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


def loss_series(workdir: Workdir) -> list[LossSeries]:
    """Train and eval loss against step, from metrics.jsonl (for the report's text chart)."""
    records = read_jsonl(workdir.metrics)
    series = []
    for key, name in (("train_loss", "train loss"), ("eval_loss", "eval loss")):
        steps, values = _series(records, key)
        series.append(LossSeries(name, tuple(zip(map(float, steps), values, strict=True))))
    return series


def write_report(workdir: Workdir, status: FineTuneJobStatus, wall_seconds: float) -> None:
    """report.md: the report `kubetune status` prints (kubetune.view.report), with the run's wall time,
    its loss chart (loss.png and the series from metrics.jsonl) and the data report."""
    data_report = None
    if workdir.data_report.exists():
        data_report = workdir.data_report.read_text().strip().removeprefix("# Data report").strip()
    report = JobReport(
        title="kubetune run",
        status=status,
        wall_seconds=wall_seconds,
        losses=loss_series(workdir),
        losses_source=workdir.metrics.name,
        losses_note=f"![loss]({workdir.plot.name})",
        data_report=data_report,
    )
    temporary = workdir.report.with_suffix(".tmp")
    temporary.write_text("\n".join(report_lines(report)) + "\n")
    temporary.replace(workdir.report)
