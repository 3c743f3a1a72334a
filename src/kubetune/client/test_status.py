"""`kubetune status` without a server: events and statuses as read, the loss history it charts, following a
job with `-w` (fake reads), and the exit status of every ending."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api.status import FineTuneJobStatus
from kubetune.client import status as command
from kubetune.client.cluster import ClusterError
from kubetune.client.prometheus import PrometheusError
from kubetune.client.status import (
    CLEAR_SCREEN,
    WATCH_FAILURES,
    Observation,
    Renderer,
    SeenLosses,
    event_record,
    events_in_order,
    follow,
    lenient_status,
)
from kubetune.view.report import EventRecord

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("event", "record"),
    [
        ({"type": "Warning", "reason": "OutOfMemory", "message": "m", "lastTimestamp": "2026-01-01T11:00:00Z",
          "eventTime": "2026-01-01T10:00:00.123456Z", "count": 2},
         EventRecord("Warning", "OutOfMemory", "m", datetime(2026, 1, 1, 11, tzinfo=UTC), 2)),
        ({"reason": "GangCreated", "eventTime": "2026-01-01T10:00:00.5Z", "series": {"count": 4}},
         EventRecord("Normal", "GangCreated", "", datetime(2026, 1, 1, 10, 0, 0, 500000, tzinfo=UTC), 4)),
        ({"metadata": {"creationTimestamp": "2026-01-01T09:00:00+00:00"}, "lastTimestamp": None},
         EventRecord("Normal", "-", "", datetime(2026, 1, 1, 9, tzinfo=UTC))),
        ({"lastTimestamp": "yesterday"}, EventRecord("Normal", "-", "", None)),
    ],
)  # fmt: skip
def test_events_as_read(event: dict[str, Any], record: EventRecord) -> None:
    assert event_record(event) == record


def test_events_are_shown_oldest_first() -> None:
    events = [{"reason": "B", "lastTimestamp": "2026-01-01T11:00:00Z"}, {"reason": "A"},
              {"reason": "C", "lastTimestamp": "2026-01-01T10:00:00Z"}]  # fmt: skip
    assert [e.reason for e in events_in_order(events)] == ["A", "C", "B"]


def test_status_fields_this_version_does_not_know_are_left_out() -> None:
    status, ignored = lenient_status({"phase": "Running", "shiny": 1, "progress": {"step": 3, "newer": {"a": 1}}})
    assert (status.phase, status.progress and status.progress.step) == ("Running", 3)
    assert sorted(ignored) == ["progress.newer", "shiny"]
    assert lenient_status(None) == (FineTuneJobStatus(), [])
    with pytest.raises(ValidationError):
        lenient_status({"restarts": "many"})


def running(step: int, train: float | None = 2.0, eval_: float | None = None, phase: str = "Running") -> Observation:
    status = FineTuneJobStatus.model_validate(
        {
            "phase": phase,
            "progress": {"step": step, "totalSteps": 40, "percent": step * 100 // 40},
            "metrics": {"trainLoss": train, "evalLoss": eval_},
        }
    )
    return Observation(job={"metadata": {"name": "demo", "creationTimestamp": "2026-01-01T11:00:00Z"}}, status=status)


def test_the_losses_seen_while_following() -> None:
    seen = SeenLosses()
    seen_losses = ((0, 9.0, 9.0), (5, 2.0, None), (5, 1.9, None), (10, 1.5, 1.4), (15, 1.2, 1.4), (20, 1.0, 1.1))
    for step, train_loss, eval_loss in seen_losses:
        seen.add(running(step, train_loss, eval_loss).status)
    train, evals = seen.series()
    assert train.points == ((5.0, 1.9), (10.0, 1.5), (15.0, 1.2), (20.0, 1.0))  # step 0: nothing trained yet
    assert evals.points == ((10.0, 1.4), (20.0, 1.1))  # a new point only for a new evaluation


def render(renderer: Renderer, observation: Observation) -> str:
    return "\n".join(renderer(observation, NOW))


def test_where_the_chart_comes_from() -> None:
    asked: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        asked.append(url)
        return {"status": "success", "data": {"resultType": "matrix", "result": [{"values": [[1, "2"], [2, "1"]]}]}}

    def failing(url: str) -> dict[str, Any]:
        raise PrometheusError("not reachable (Connection refused)")

    text = render(Renderer("ns", "demo", "http://p:9090", fetch=fetch), running(5))
    assert "Loss history (Prometheus at http://p:9090)" in text and "train loss  █▁  2 -> 1" in text
    assert "start=1767265200.000" in asked[0]  # the job's creation: it has no startTime
    text = render(Renderer("ns", "demo", "http://p:9090", fetch=failing), running(5))
    assert "No loss history from Prometheus at http://p:9090: not reachable (Connection refused)." in text
    empty = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    assert "has no loss of this job (yet)" in render(
        Renderer("ns", "demo", "http://p", fetch=lambda u: empty), running(5)
    )
    assert "(seen while following, one point per status)" in render(
        Renderer("ns", "demo", seen=SeenLosses()), running(5)
    )
    assert "The chart grows as the job reports losses" in render(Renderer("ns", "demo", seen=SeenLosses()), running(0))
    assert "`--prometheus URL` charts their history" in render(Renderer("ns", "demo"), running(5))
    left_out = running(5)
    left_out.ignored = ["shiny"]
    assert "Left out:" in render(Renderer("ns", "demo"), left_out)


class Script:
    """Fake reads: each item an Observation to return or a ClusterError to raise."""

    def __init__(self, *items: Observation | ClusterError) -> None:
        self.items: Iterator[Observation | ClusterError] = iter(items)
        self.sleeps = 0

    def take(self) -> Observation:
        item = next(self.items)
        if isinstance(item, ClusterError):
            raise item
        return item

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1


def run_follow(script: Script, redraw: bool = False) -> tuple[int | ClusterError, str, str]:
    out, err = io.StringIO(), io.StringIO()
    lines: Callable[[Observation, datetime], list[str]] = lambda o, now: [f"REPORT {o.status.phase}"]  # noqa: E731
    try:
        code: int | ClusterError = follow(script.take, lines, out, err, 0.5, redraw, script.sleep, lambda: NOW)
    except ClusterError as error:
        code = error
    return code, out.getvalue(), err.getvalue()


def test_following_prints_the_report_then_one_line_per_change_then_the_final_report() -> None:
    script = Script(running(10), running(10), running(20), running(20, 1.5), running(40, phase="Succeeded"))
    code, out, err = run_follow(script)
    assert (code, err, script.sleeps) == (0, "", 4)
    assert out == (
        "REPORT Running\n\nfollowing until the job finishes (Ctrl-C stops), every 0.5 s:\n"
        "12:00:00 Running | step 20/40 (50%) | train loss 2 | eval loss - | restarts 0\n"
        "12:00:00 Running | step 20/40 (50%) | train loss 1.5 | eval loss - | restarts 0\n"
        "\nREPORT Succeeded\n"
    )


def test_following_on_a_terminal_redraws_the_report() -> None:
    code, out, _ = run_follow(Script(running(10), running(20), running(40, phase="Failed")), redraw=True)
    assert code == 0 and out.count(CLEAR_SCREEN) == 3 and out.endswith("REPORT Failed\n")


def test_a_finished_job_is_shown_once() -> None:
    script = Script(running(40, phase="Succeeded"))
    assert run_follow(script) == (0, "REPORT Succeeded\n", "") and script.sleeps == 0


def test_failed_reads_while_following_are_retried_a_few_times() -> None:
    flaky = ClusterError("cannot reach the API server")
    code, _, err = run_follow(Script(running(10), flaky, running(20, phase="Succeeded")))
    assert code == 0 and err == "kubetune status: cannot reach the API server (retrying in 0.5 s)\n"
    code, _, _ = run_follow(Script(running(10), *[flaky] * WATCH_FAILURES))
    assert code is flaky
    gone = ClusterError("FineTuneJob demo not found", not_found=True)
    assert run_follow(Script(running(10), gone))[0] is gone  # deleted while followed: at once
    assert run_follow(Script(flaky))[0] is flaky  # the first read: at once


def arguments(**overrides: Any) -> argparse.Namespace:
    values = {"name": "demo", "namespace": None, "watch": False, "kubeconfig": None, "context": None,
              "prometheus": None, "interval": 5.0} | overrides  # fmt: skip
    return argparse.Namespace(**values)


@pytest.mark.parametrize(
    ("raised", "code", "words"),
    [
        (ClusterError("FineTuneJob demo not found in namespace x: check", not_found=True), 1, "kubetune status: FineTuneJob demo not found"),
        (ClusterError("--context b: no such context", 2), 2, "kubetune status: --context b: no such context"),
        (KeyboardInterrupt(), 130, "stopped following FineTuneJob demo"),
        (RuntimeError("boom"), 1, "kubetune status: unexpected RuntimeError: boom (KUBETUNE_DEBUG=1 shows where"),
    ],
)  # fmt: skip
def test_every_ending_has_its_exit_status_and_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raised: BaseException, code: int, words: str
) -> None:
    def show(args: argparse.Namespace, out: Any, err: Any) -> int:
        raise raised

    monkeypatch.setattr(command, "show", show)
    monkeypatch.delenv("KUBETUNE_DEBUG", raising=False)
    assert command.main(arguments()) == code
    captured = capsys.readouterr()
    assert words in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_kubetune_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def show(args: argparse.Namespace, out: Any, err: Any) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(command, "show", show)
    monkeypatch.setenv("KUBETUNE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        command.main(arguments())
