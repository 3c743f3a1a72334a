"""The report `kubetune run` writes and `kubetune status` prints, from the status model, as tables:
(status and what goes with it) -> lines that must appear, and lines that must not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from kubetune.api.status import (
    ApproachResult,
    CheckpointStatus,
    Condition,
    EvaluationResult,
    EvaluationSummary,
    FineTuneJobStatus,
    Metrics,
    OutputStatus,
    Progress,
)
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import decide
from kubetune.view.chart import LossSeries
from kubetune.view.report import (
    EventRecord,
    JobReport,
    age,
    is_restart,
    progress_line,
    report_lines,
    table,
)
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def condition(
    type_: str, status: Literal["True", "False"] = "True", reason: str = "", message: str = "", seconds_ago: float = 60
) -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=ago(seconds_ago))


RUNNING = FineTuneJobStatus(
    phase="Running",
    restarts=1,
    attempt=2,
    start_time=ago(600),
    message="attempt 2: 2 worker(s) training",
    conditions=[
        condition("Running", reason="WorkersRunning", message="attempt 2: 2 worker(s) training", seconds_ago=240),
        condition("Restarting", "False", "WorkersRunning", "attempt 2: 2 worker(s) training", 240),
    ],
    progress=Progress(step=12, total_steps=40, epoch=0.6, percent=30, eta_seconds=130),
    metrics=Metrics(train_loss=1.25, eval_loss=1.1, best_eval_loss=1.05, best_step=10, tokens_per_second=850.0),
    checkpoints=CheckpointStatus(latest="/checkpoints/step-10", latest_step=10),
)
RESTART = EventRecord("Warning", "OutOfMemory", "worker 1 ran out of memory; restarting the gang from ...", ago(300))
APPROACHES = EvaluationSummary(
    approaches=[
        ApproachResult(
            name="base 4-shot",
            approach="few-shot",
            model="base",
            exact_match=0.725,
            eval_loss=0.807,
            latency_seconds=1.38,
            parameters=134_500_000,
        ),
        ApproachResult(
            name="fine-tuned",
            approach="fine-tuned",
            model="fine-tuned",
            exact_match=1.0,
            eval_loss=0.013,
            latency_seconds=0.64,
            parameters=134_500_000,
        ),
    ],
    verdict="fine-tuned (135 M) reaches 1.00 exact match vs 0.72 for base 4-shot (135 M)",
)
SUCCEEDED = RUNNING.model_copy(
    update={
        "phase": "Succeeded",
        "completion_time": ago(0),
        "conditions": [
            *RUNNING.conditions,
            condition("Succeeded", reason="TrainingCompleted", message="done", seconds_ago=0),
        ],
        "output": OutputStatus(path="/models/demo"),
        "evaluation": APPROACHES,
    }
)


def terminal(status: FineTuneJobStatus, **kw: Any) -> str:
    return "\n".join(report_lines(JobReport(title="FineTuneJob ns/demo", status=status, markdown=False, now=NOW, **kw)))


def markdown(status: FineTuneJobStatus, **kw: Any) -> str:
    return "\n".join(report_lines(JobReport(title="kubetune run", status=status, **kw)))


#: (report, what must appear, what must not)
CASES: list[tuple[str, str, list[str], list[str]]] = [
    (
        "a new job",
        terminal(FineTuneJobStatus()),
        ["FineTuneJob ns/demo: Pending", "Phase:          Pending", "Progress:       no step reported yet",
         "Latest losses:  none reported yet", "Restarts:       0 (attempt 0)", "Model:          not exported"],
        ["Conditions", "Recent events", "ETA", "Outcome"],
    ),
    (
        "a running job, in a terminal",
        terminal(RUNNING, events=[RESTART]),
        ["Phase:          Running (WorkersRunning): attempt 2: 2 worker(s) training",
         "Progress:       step 12 of 40 (30%), epoch 0.60, ETA 2m10s",
         "Latest losses:  train 1.25, eval 1.1, best eval 1.05 at step 10",
         "Throughput:     850 tokens/s (non-padding, all ranks)",
         "Restarts:       1 (attempt 2); OutOfMemory (5m ago)",
         "Started:        2026-01-01 11:50:00 UTC (10m ago)",
         "Checkpoint:     step 10: /checkpoints/step-10",
         "Conditions\n----------\n| condition  | status | reason         | since  | message",
         "| Restarting | False  | WorkersRunning | 4m ago | attempt 2: 2 worker(s) training |",
         "| 5m ago | Warning | OutOfMemory | worker 1 ran out of memory; restarting the gang from ... |"],
        ["**", "#", "Restarting:", "Outcome"],
    ),
    (
        "a restarting job says why",
        terminal(RUNNING.model_copy(update={"phase": "Restarting", "conditions": [
            condition("Restarting", reason="OutOfMemory", message="worker 1 ran out of memory; restarting")]})),
        ["FineTuneJob ns/demo: Restarting", "Phase:          Restarting (OutOfMemory): worker 1 ran out of memory",
         "Restarting:     OutOfMemory: worker 1 ran out of memory; restarting"],
        [],
    ),
    (
        "a finished job: outcome, no ETA, how long it took, the approaches and the verdict",
        terminal(SUCCEEDED, events=[]),
        ["Outcome:        Succeeded (TrainingCompleted): done", "step 12 of 40 (30%), epoch 0.60\n",
         "Started:        2026-01-01 11:50:00 UTC (10m ago), took 10m00s", "Model:          /models/demo",
         "Verdict: fine-tuned (135 M) reaches 1.00 exact match vs 0.72 for base 4-shot (135 M)",
         "| approach    | exact match | eval loss | token accuracy | latency (s/answer) | generated tokens/s | parameters |",
         "| fine-tuned  | 100.0%      | 0.013     | -              | 0.64               | -                  | 134.5 M    |",
         "Recent events\n-------------\nnone"],
        ["ETA"],
    ),
    (
        "a DPO job: preference and reward accuracy beside its reference, on the test set",
        markdown(SUCCEEDED.model_copy(update={"evaluation": EvaluationSummary(scored_on="test", verdict="v", approaches=[
            ApproachResult(name="reference (starting model)", approach="zero-shot", model="base",
                           preference_accuracy=0.7, reward_accuracy=0.0, exact_match=0.35),
            ApproachResult(name="fine-tuned", approach="fine-tuned", model="fine-tuned",
                           preference_accuracy=0.8, reward_accuracy=0.9, exact_match=0.4)])})),
        ["## Was fine-tuning worth it? (test set)",
         "| approach | preference accuracy | reward accuracy | exact match | eval loss |",
         "| fine-tuned | 80.0% | 90.0% | 40.0% | - |"],
        ["validation set"],
    ),
    (
        "fit signs and early stopping",
        terminal(SUCCEEDED.model_copy(update={"conditions": [
            condition("EarlyStopped", reason="EarlyStopped", message="no improvement for 3 evaluations"),
            condition("OverfittingSuspected", reason="EvalLossRising", message="eval loss rose 3 times"),
            condition("UnderfittingSuspected", "False", "FitLooksHealthy", "fine")]})),
        ["Early stopping:        no improvement for 3 evaluations",
         "OverfittingSuspected:  eval loss rose 3 times"],
        ["UnderfittingSuspected: "],
    ),
    (
        "events that could not be read, and a loss history",
        terminal(RUNNING, events_note="the events are not readable (403 Forbidden)",
                 losses=[LossSeries("train loss", ((1, 2.0), (2, 1.0)))], losses_source="Prometheus at http://p"),
        ["Loss history (Prometheus at http://p)\n-------------------------------------\ntrain loss  █▁  2 -> 1",
         "Recent events\n-------------\nthe events are not readable (403 Forbidden)"],
        ["none"],
    ),
    (
        "report.md: Markdown, absolute times, the image, base vs fine-tuned, the data report",
        markdown(SUCCEEDED.model_copy(update={"evaluation": EvaluationSummary(
            base_model=EvaluationResult(eval_loss=3.2, exact_match=0.05, examples=40),
            fine_tuned=EvaluationResult(eval_loss=0.4, exact_match=0.9, examples=40))}),
            wall_seconds=123.4, losses=[LossSeries("train loss", ((1, 2.0), (2, 1.0)))],
            losses_source="metrics.jsonl", losses_note="![loss](loss.png)", data_report="| examples | 64 |"),
        ["# kubetune run: Succeeded", "- **Outcome**: Succeeded (TrainingCompleted): done",
         "- **Restarts**: 1 (attempt 2)", "- **Wall time**: 123 s", "- **Started**: 2026-01-01 11:50:00 UTC, took 10m00s",
         "## Loss history (metrics.jsonl)\n\n```\ntrain loss  █▁  2 -> 1, lowest 1 (2 points, steps 1-2)\n```\n\n![loss](loss.png)",
         "| Succeeded | True | TrainingCompleted | 2026-01-01 12:00:00 UTC | done |",
         "| base model | 3.2 | - | - | 5.0% | 40 |", "## Data report\n\n| examples | 64 |"],
        ["ago", "Recent events"],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "present", "absent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_report(text: str, present: list[str], absent: list[str]) -> None:
    for words in present:
        assert words in text, f"{words!r} missing from:\n{text}"
    for words in absent:
        assert words not in text, f"{words!r} should not be in:\n{text}"


def test_only_the_recent_events_are_shown_oldest_first() -> None:
    events = [EventRecord("Normal", f"Reason{i}", f"message {i}", ago(100 - i)) for i in range(15)]
    text = terminal(RUNNING, events=events)
    assert "Reason4 " not in text and text.index("Reason5 ") < text.index("Reason14 ")
    repeated = terminal(RUNNING, events=[EventRecord("Warning", "BackOff", "pulling", ago(5), count=3)])
    assert "| 5s ago | Warning | BackOff | pulling (x3) |" in repeated


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (FineTuneJobStatus(), "Pending | restarts 0"),
        (RUNNING, "Running | step 12/40 (30%) | train loss 1.25 | eval loss 1.1 | ETA 2m10s | restarts 1"),
        (SUCCEEDED, "Succeeded | step 12/40 (30%) | train loss 1.25 | eval loss 1.1 | restarts 1"),
    ],
)
def test_progress_line(status: FineTuneJobStatus, line: str) -> None:
    assert progress_line(status) == line


@pytest.mark.parametrize(
    ("seconds", "text"), [(-5, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3660, "1h01m"), (90000, "1d01h")]
)
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_tables_align_for_terminals_and_escape_pipes_in_markdown() -> None:
    rows = [["a", "x|y"], ["longer", "two\nlines"]]
    assert table(["h", "message"], rows, markdown=True) == [
        "| h | message |", "|---|---|", "| a | x\\|y |", "| longer | two lines |"
    ]  # fmt: skip
    assert table(["h", "message"], rows, markdown=False) == [
        "| h      | message   |", "|--------|-----------|", "| a      | x|y       |", "| longer | two lines |"
    ]  # fmt: skip


def test_the_restart_event_the_policies_post_is_recognised() -> None:
    """The report finds restarts among the events by what the operator's restart event says."""
    job = a_job("demo").workers(1).retry(max_restarts=2).to_job()
    launched = decide(job, [], NOW)
    job = job.model_copy(update={"status": launched.status})
    failed = decide(job, [WorkerObservation(index=0, attempt=1, state="failed", exit_code=137, oom_killed=True)], NOW)
    assert failed.status.phase == "Restarting"
    posted = [EventRecord(e.type, e.reason, e.message) for e in failed.events]
    assert [e.reason for e in posted if is_restart(e)] == ["OutOfMemory"], posted
    assert not any(is_restart(EventRecord(e.type, e.reason, e.message)) for e in launched.events)
