"""A FineTuneJob's report as text lines, for `kubetune run`'s report.md and `kubetune status`.

`report_lines(JobReport)` renders, in this order: the phase with its reason and message, early stopping
and fit signs, progress and ETA, the latest losses, throughput, restarts (and the reason of the last
one), times, checkpoint and model; the loss chart; the conditions; the approaches table and verdict
(or base vs fine-tuned); the data report; the job's recent events. Sections with nothing to say are left
out. `markdown=True` writes Markdown (bold labels, headings, a fenced chart); `markdown=False` writes
the same for a terminal (aligned labels and table columns, no markup). Figures come from the status
only: what the status does not carry (the loss history, the data report, events) is passed in beside
it, and the report says so where it is missing rather than guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubetune.api.status import (
    FINISHED_PHASES,
    ApproachResult,
    Condition,
    ConditionType,
    EvaluationResult,
    FineTuneJobStatus,
)
from kubetune.view.chart import LossSeries, chart_lines, duration, number

#: Events shown, the most recent ones.
RECENT_EVENTS = 10
#: What the event of a gang restart says (kubetune.policies.reconcile writes it; a test holds them together).
RESTART_PHRASE = "restarting the gang"


@dataclass(frozen=True)
class EventRecord:
    """One Kubernetes Event about the job (type Normal or Warning), `count` times since `first_time`."""

    type: str
    reason: str
    message: str
    time: datetime | None = None
    count: int = 1


@dataclass(frozen=True)
class JobReport:
    """What one report shows: the status, and what goes with it that the status does not carry."""

    title: str
    """e.g. `kubetune run` or `FineTuneJob team-a/demo`."""
    status: FineTuneJobStatus
    markdown: bool = True
    now: datetime | None = None
    """For ages (`5m ago`) and elapsed times; None: absolute times only."""
    wall_seconds: float | None = None
    """The supervisor's own wall time (`kubetune run`)."""
    losses: Sequence[LossSeries] = ()
    losses_source: str = ""
    """Where the loss history comes from, e.g. `metrics.jsonl` or `Prometheus at http://...`."""
    losses_note: str | None = None
    """Shown under the chart, or instead of it: an image link, or why there is no history."""
    data_report: str | None = None
    """The data report's Markdown, without its title."""
    events: Sequence[EventRecord] | None = None
    """The job's events, oldest first; None: not looked up (no section, unless `events_note` says why)."""
    events_note: str | None = None
    """Why the events are missing (e.g. not permitted)."""
    extra: Sequence[tuple[str, str]] = field(default_factory=tuple)
    """Further (label, text) fields after the standard ones."""


def is_restart(event: EventRecord) -> bool:
    """The Warning event the operator posts when it restarts the gang: its reason is the failure's."""
    return event.type == "Warning" and RESTART_PHRASE in event.message


def _cell(value: float | int | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.4g}"


def _millions(count: int | None) -> str:
    return "-" if count is None else f"{count / 1e6:.1f} M"


def _flat(text: str, markdown: bool) -> str:
    """Cell text on one line; `|` escaped in Markdown."""
    flat = " ".join(text.split())
    return flat.replace("|", "\\|") if markdown else flat


def table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = True) -> list[str]:
    """A pipe table: Markdown as it is, or with aligned columns for a terminal (still valid Markdown)."""
    rows = [[_flat(cell, markdown) for cell in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return lines + ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return ("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |").rstrip()

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]


def evaluation_table(base: EvaluationResult | None, tuned: EvaluationResult | None, markdown: bool = True) -> list[str]:
    """Base model against fine-tuned model on the validation set."""
    rows = [
        [
            name,
            _cell(r.eval_loss),
            _cell(r.perplexity),
            _cell(r.token_accuracy, True),
            _cell(r.exact_match, True),
            _cell(r.examples),
        ]
        for name, r in (("base model", base), ("fine-tuned", tuned))
        if r is not None
    ]
    header = ["model", "eval loss", "perplexity", "token accuracy", "exact match", "examples"]
    return table(header, rows, markdown)


def approaches_table(rows: Sequence[ApproachResult], markdown: bool = True) -> list[str]:
    """Every approach on the same held-out set: quality, latency, speed, size; DPO rows add preference
    accuracy (how often the model's log-probability ranks the chosen answer first) and reward accuracy."""
    preference = any(r.preference_accuracy is not None for r in rows)
    header = [
        "approach", *(["preference accuracy", "reward accuracy"] if preference else []), "exact match", "eval loss",
        "token accuracy", "latency (s/answer)", "generated tokens/s", "parameters",
    ]  # fmt: skip
    cells = [
        [
            r.name,
            *([_cell(r.preference_accuracy, True), _cell(r.reward_accuracy, True)] if preference else []),
            _cell(r.exact_match, True),
            _cell(r.eval_loss),
            _cell(r.token_accuracy, True),
            _cell(r.latency_seconds),
            _cell(r.tokens_per_second),
            _millions(r.parameters),
        ]
        for r in rows
    ]
    return table(header, cells, markdown)


def age(seconds: float) -> str:
    """How long ago, as people say it: `42s`, `5m`, `3h05m`, `2d04h`."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def _when(moment: datetime | None, now: datetime | None) -> str:
    """`5m ago` (with `now`), else the time itself."""
    if moment is None:
        return "-"
    if now is None:
        return _time(moment)
    return f"{age((now - moment).total_seconds())} ago"


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _condition(status: FineTuneJobStatus, type_: str, true_only: bool = False) -> Condition | None:
    found = next((c for c in status.conditions if c.type == type_), None)
    return None if found is None or (true_only and found.status != "True") else found


def progress_line(status: FineTuneJobStatus) -> str:
    """One line: phase, step/total, losses, ETA, restarts (what `kubetune status -w` prints as it follows)."""
    parts: list[str] = [status.phase]
    progress, metrics = status.progress, status.metrics
    if progress is not None and progress.total_steps:
        parts.append(f"step {progress.step}/{progress.total_steps} ({progress.percent}%)")
    if metrics is not None:
        parts.append(f"train loss {number(metrics.train_loss)}")
        parts.append(f"eval loss {number(metrics.eval_loss)}")
    if progress is not None and progress.eta_seconds is not None and status.phase not in FINISHED_PHASES:
        parts.append(f"ETA {duration(progress.eta_seconds)}")
    parts.append(f"restarts {status.restarts}")
    return " | ".join(parts)


def _fields(report: JobReport) -> list[tuple[str, str]]:
    status, now = report.status, report.now
    progress, metrics = status.progress, status.metrics
    finished = status.phase in FINISHED_PHASES
    fields: list[tuple[str, str]] = []

    own = _condition(status, status.phase)
    text = status.phase + (f" ({own.reason})" if own is not None and own.reason else "")
    message = (own.message if own is not None else "") or status.message or ""
    fields.append(("Outcome" if finished else "Phase", text + (f": {message}" if message else "")))
    early = _condition(status, ConditionType.EARLY_STOPPED, true_only=True)
    if early is not None:
        fields.append(("Early stopping", early.message))
    for sign in (ConditionType.OVERFITTING_SUSPECTED, ConditionType.UNDERFITTING_SUSPECTED):
        fit = _condition(status, sign, true_only=True)
        if fit is not None:
            fields.append((fit.type, fit.message))

    if progress is not None and progress.total_steps:
        text = f"step {progress.step} of {progress.total_steps} ({progress.percent}%), epoch {progress.epoch:.2f}"
        if progress.eta_seconds is not None and not finished:
            text += f", ETA {duration(progress.eta_seconds)}"
    else:
        text = "no step reported yet" if not finished else "no step reported"
    fields.append(("Progress", text))

    losses = []
    if metrics is not None:
        for name, value in (("train", metrics.train_loss), ("eval", metrics.eval_loss)):
            if value is not None:
                losses.append(f"{name} {number(value)}")
        if metrics.best_eval_loss is not None:
            at = f" at step {metrics.best_step}" if metrics.best_step is not None else ""
            losses.append(f"best eval {number(metrics.best_eval_loss)}{at}")
    text = ", ".join(losses) or ("none reported" if finished else "none reported yet")
    fields.append(("Latest losses", text))
    if metrics is not None and (metrics.tokens_per_second is not None or metrics.learning_rate is not None):
        text = f"{number(metrics.tokens_per_second)} tokens/s (non-padding, all ranks)"
        if metrics.learning_rate is not None:
            text += f", learning rate {number(metrics.learning_rate, 3)}"
        fields.append(("Throughput", text))

    text = f"{status.restarts} (attempt {status.attempt})"
    restarts = [e for e in report.events or () if is_restart(e)][-RECENT_EVENTS:]
    if restarts:
        text += "; " + ", ".join(f"{e.reason} ({_when(e.time, now)})" for e in restarts)
    fields.append(("Restarts", text))
    restarting = _condition(status, ConditionType.RESTARTING, true_only=True)
    if restarting is not None:
        fields.append(("Restarting", f"{restarting.reason}: {restarting.message}"))

    if status.start_time is not None:
        text = _time(status.start_time)
        if now is not None:
            text += f" ({age((now - status.start_time).total_seconds())} ago)"
        if finished and status.completion_time is not None:
            text += f", took {duration((status.completion_time - status.start_time).total_seconds())}"
        fields.append(("Started", text))
    if report.wall_seconds is not None:
        fields.append(("Wall time", f"{report.wall_seconds:.0f} s"))
    checkpoints = status.checkpoints
    if checkpoints is not None and checkpoints.latest:
        step = f"step {checkpoints.latest_step}: " if checkpoints.latest_step is not None else ""
        fields.append(("Checkpoint", step + checkpoints.latest))
    fields.append(("Model", status.output.path if status.output and status.output.path else "not exported"))
    return fields + list(report.extra)


def _heading(text: str, level: int, markdown: bool) -> list[str]:
    return [f"{'#' * level} {text}", ""] if markdown else [text, "-" * len(text)]


def report_lines(report: JobReport) -> list[str]:
    """The whole report, one string per line (see the module docstring)."""
    status, md = report.status, report.markdown
    lines = [f"# {report.title}: {status.phase}" if md else f"{report.title}: {status.phase}", ""]
    fields = _fields(report)
    label = max(len(name) for name, _ in fields) + 1
    for name, text in fields:
        lines.append(f"- **{name}**: {text}" if md else f"{name + ':':<{label}}  {text}")
    lines.append("")

    chart = chart_lines(report.losses)
    if chart or report.losses_note:
        title = "Loss history" + (f" ({report.losses_source})" if chart and report.losses_source else "")
        lines += _heading(title, 2, md)
        if chart:
            lines += ["```", *chart, "```"] if md else chart
        if report.losses_note:
            lines += ["", report.losses_note] if chart else [report.losses_note]
        lines.append("")

    if status.conditions:
        rows = [
            [c.type, c.status, c.reason or "-", _when(c.last_transition_time, report.now), c.message]
            for c in status.conditions
        ]
        lines += _heading("Conditions", 2, md)
        lines += table(["condition", "status", "reason", "since", "message"], rows, md)
        lines.append("")

    evaluation = status.evaluation
    scored_on = f"{evaluation.scored_on or 'validation'} set" if evaluation is not None else ""
    if evaluation is not None and evaluation.approaches:
        lines += _heading(f"Was fine-tuning worth it? ({scored_on})", 2, md)
        if evaluation.verdict:
            lines += [f"**{evaluation.verdict}**" if md else f"Verdict: {evaluation.verdict}", ""]
        lines += approaches_table(evaluation.approaches, md)
        lines.append("")
    elif evaluation is not None and (evaluation.base_model or evaluation.fine_tuned):
        lines += _heading(f"Base model vs fine-tuned ({scored_on})", 2, md)
        lines += evaluation_table(evaluation.base_model, evaluation.fine_tuned, md)
        lines.append("")

    if report.data_report:
        lines += _heading("Data report", 2, md)
        lines += [report.data_report.strip(), ""]

    if report.events is not None or report.events_note:
        lines += _heading("Recent events", 2, md)
        recent = list(report.events or ())[-RECENT_EVENTS:]
        if recent:
            rows = [
                [_when(e.time, report.now), e.type, e.reason, e.message + (f" (x{e.count})" if e.count > 1 else "")]
                for e in recent
            ]
            lines += table(["when", "type", "reason", "message"], rows, md)
        if report.events_note or not recent:
            lines.append(report.events_note or "none")
        lines.append("")
    while lines and not lines[-1]:
        lines.pop()
    return lines
