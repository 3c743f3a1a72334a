"""The start-up timeline: the process's own start from /proc, and the time spent before each mark."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from kubetune.trainer.timeline import Timeline, process_start_time


def test_the_process_start_is_read_from_proc_to_a_tick() -> None:
    # A fresh process says when it started; it can be neither before it was asked for nor after it ran.
    # (psutil's create_time counts from /proc/stat's btime, whole seconds: up to a second early.)
    before = time.time()
    said = subprocess.run(
        [sys.executable, "-c", "import time; from kubetune.trainer.timeline import process_start_time as p; "
         "print(p(), time.time())"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    started, running = float(said[0]), float(said[1])
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert before - tick <= started <= running, (before, started, running)
    assert psutil.Process().create_time() <= process_start_time() + tick  # type: ignore[operator]


def test_each_phase_is_the_time_since_the_mark_before_it() -> None:
    timeline = Timeline(attempt=2)
    timeline.marks = {"started": 100.0}
    for name, at in (("imported", 104.5), ("joined", 105.0), ("model", 106.25), ("first_step", 107.0)):
        timeline.mark(name)
        timeline.marks[name] = at
    assert timeline.durations() == {"imported": 4.5, "joined": 0.5, "model": 1.25, "first_step": 0.75}
    record = timeline.record()
    assert record["kind"] == "startup" and record["attempt"] == 2 and record["marks"]["model"] == 106.25
    assert timeline.summary().startswith("start-up of attempt 2: 7.0 s to the first step (imported 4.5 s,")
    assert timeline.summary().endswith(
        '; marks {"started":100.0,"imported":104.5,"joined":105.0,"model":106.25,"first_step":107.0}'
    )
    with pytest.raises(ValueError, match="unknown start-up mark 'warmup'"):
        timeline.mark("warmup")
