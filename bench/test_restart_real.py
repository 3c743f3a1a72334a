"""The restart benchmark's arithmetic: marks read from a log, the watcher's first sightings, breakdowns
whose phases add up to the total, medians and the section."""

from __future__ import annotations

from typing import Any

from bench.restart_real import (
    JobWatcher,
    breakdown_to_first_step,
    breakdown_to_next_step,
    marks_of,
    section,
    summarize,
)

LOG = (
    "2026-12-07 07:00:01,000 rank0 INFO kubetune.trainer.main: start-up of attempt 1: 9.0 s to the first step "
    '(imported 4.0 s); marks {"started":1004.0,"imported":1008.0,"joined":1009.0,"model":1011.0,"first_step":1013.0}\n'
    "2026-12-07 07:01:01,000 rank0 INFO kubetune.trainer.main: start-up of attempt 2: 8.0 s to the first step "
    '(imported 4.0 s); marks {"started":1104.0,"imported":1108.0,"joined":1108.5,"resumed":1111.0,"first_step":1112.0}\n'
)


def pod(name: str, node: str | None = None, running: bool = False) -> dict[str, Any]:
    state = {"running": {}} if running else {"waiting": {}}
    return {"metadata": {"name": name}, "spec": {"nodeName": node}, "status": {"containerStatuses": [{"state": state}]}}


def test_marks_are_read_per_attempt() -> None:
    assert marks_of(LOG, 2) == {"started": 1104.0, "imported": 1108.0, "joined": 1108.5, "resumed": 1111.0,
                                "first_step": 1112.0}  # fmt: skip
    assert marks_of(LOG, 3) is None


def test_the_watcher_keeps_first_sightings() -> None:
    views: list[tuple[list[dict[str, Any]], str]] = [
        ([pod("j-a1-w0")], "Pending"),
        ([pod("j-a1-w0", "n"), pod("j-a1-w1", "n")], "Pending"),
        ([pod("j-a1-w0", "n", True), pod("j-a1-w1", "n", True)], "Running"),
        ([pod("j-a1-w0", "n", True), pod("j-a1-w1", "n", True)], "Restarting"),
        ([], "Restarting"),
        ([pod("j-a2-w0"), pod("j-a2-w1")], "Pending"),
    ]
    current: dict[str, Any] = {}
    watcher = JobWatcher(lambda: current["pods"], lambda: current["phase"], "j", workers=2)
    for second, (pods, phase) in enumerate(views):
        current.update(pods=pods, phase=phase)
        watcher.look(float(second))
    assert watcher.seen == {"a1:created": 1.0, "a1:scheduled": 1.0, "a1:running": 2.0, "restarting": 3.0,
                            "a1:gone": 4.0, "a2:created": 5.0}  # fmt: skip


def test_breakdowns_add_up_to_their_totals() -> None:
    seen = {"a1:created": 1001.0, "a1:scheduled": 1001.5, "a1:running": 1003.0, "restarting": 1101.0,
            "a2:created": 1102.0, "a2:scheduled": 1102.2, "a2:running": 1103.0}  # fmt: skip
    first = breakdown_to_first_step(1000.0, seen, marks_of(LOG, 1) or {})
    assert first["total"] == 13.0 and sum(first["phases"].values()) == 13.0
    assert first["phases"]["admission, operator, pods created"] == 1.0
    assert first["phases"]["Python, torch, transformers, DeepSpeed imports"] == 4.0
    assert first["phases"]["model load"] == 2.0, "data not marked: the model's time runs from the rendezvous"
    recovery = breakdown_to_next_step(1100.0, seen, marks_of(LOG, 2) or {})
    assert recovery["total"] == 12.0 and sum(recovery["phases"].values()) == 12.0
    assert recovery["phases"]["failure seen, job Restarting"] == 1.0
    assert recovery["phases"]["checkpoint read"] == 2.5


def test_medians_and_the_section() -> None:
    runs = [
        {"first_step": {"total": t, "phases": {"model load": t / 2}}, "next_step": {"total": t + 1, "phases": {}}}
        for t in (10.0, 30.0, 20.0)
    ]
    first = summarize(runs, "first_step")
    assert (first["median"], first["min"], first["max"], first["phases"]) == (20.0, 10.0, 30.0, {"model load": 10.0})
    text = section({"first_step": first, "next_step": summarize(runs, "next_step"), "machine_line": "2 cores.",
                    "job_line": "Two workers.", "date": "2026-12-07", "path": "recreate"})  # fmt: skip
    assert "| model load | 10.00 |  |" in text and "| **20.0** (10.0-30.0) | **21.0** (11.0-31.0) |" in text
    before = {"first_step": summarize(runs[:1], "first_step"), "next_step": summarize(runs[:1], "next_step"),
              "date": "2026-12-06", "label": "recreate, no cache"}  # fmt: skip
    compared = section({"first_step": first, "next_step": summarize(runs, "next_step"), "machine_line": "2 cores.",
                        "job_line": "Two workers.", "date": "2026-12-07", "path": "recreate"}, before)  # fmt: skip
    assert "| phase | time to first step before (s) | time to first step after (s) |" in compared
    assert "| model load | 5.00 | 10.00 |  |  |" in compared and "Before: 2026-12-06, recreate, no cache." in compared


def test_a_phase_missing_from_a_run_is_left_out_of_its_median() -> None:
    runs = [{"next_step": {"total": 9.0, "phases": {"imports": 8.0, "checkpoint read": 1.0}}},
            {"next_step": {"total": 8.0, "phases": {"imports": 8.0}}},
            {"next_step": {"total": 10.0, "phases": {"imports": 7.0, "checkpoint read": 3.0}}}]  # fmt: skip
    assert summarize(runs, "next_step")["phases"] == {"imports": 8.0, "checkpoint read": 2.0}
