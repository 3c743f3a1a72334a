"""Where a rank's start-up goes, from its process's start to its first optimizer step.

Every restart pays the start-up again on every rank of the gang, while the accelerators wait: it is the
part of a recovery that the trainer itself decides. So it is measured, not guessed (issue 29): rank 0
writes one `startup` record to metrics.jsonl at its first step (each attempt, resumed or not) and logs
one line with the same figures; `bench/restart_real.py` adds the pod's side (admission, scheduling,
container start) from the API server.

Marks are wall-clock times (Unix seconds), so that they line up with the API server's timestamps; the
process's own start comes from /proc (Linux), before any Python module was imported.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

#: The marks in the order they happen, and what the time before each one was spent on.
PHASES = {
    "started": "the rank's process started (torchrun has started it)",
    "imported": "Python, torch, transformers and DeepSpeed imported",
    "joined": "the process group formed (rendezvous)",
    "data": "dataset read, checked and tokenized",
    "model": "model weights loaded",
    "engine": "DeepSpeed engine and optimizer created",
    "resumed": "the last checkpoint read (when there is one)",
    "evaluated": "the base model and baselines scored (when asked, first attempt only)",
    "first_step": "the first optimizer step done",
}


def process_start_time() -> float | None:
    """When this process started (Unix seconds), from /proc; None where there is no /proc."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5), counted from after the command's ")"
        # Ticks since boot, on the boot-time clock; /proc/stat's btime would do, but it is whole seconds.
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since_start
    except (OSError, ValueError, IndexError):
        return None


class Timeline:
    """This rank's start-up marks; `mark` each one as it is reached."""

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        started = process_start_time()
        self.marks: dict[str, float] = {"started": started} if started is not None else {}

    def mark(self, name: str) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown start-up mark {name!r}")
        self.marks[name] = time.time()

    def durations(self) -> dict[str, float]:
        """Seconds spent before each mark after the first, from the mark before it."""
        named = [(name, self.marks[name]) for name in PHASES if name in self.marks]
        return {name: at - before for (_, before), (name, at) in itertools.pairwise(named)}

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl record: the marks and the time spent before each."""
        return {"kind": "startup", "attempt": self.attempt, "marks": self.marks, "seconds": self.durations()}

    def summary(self) -> str:
        """One log line: the time spent before each mark, then the marks themselves as JSON (`marks {...}`,
        which the restart benchmark reads from the pod's log: the workdir is the pod's scratch)."""
        spent = self.durations()
        total = sum(spent.values())
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in spent.items())
        marks = json.dumps({name: round(at, 3) for name, at in self.marks.items()}, separators=(",", ":"))
        return f"start-up of attempt {self.attempt}: {total:.1f} s to the first step ({parts}); marks {marks}"
