"""The live progress line of `kubetune run`.

On a terminal it is one line redrawn in place (rich's Live display); anywhere else (CI logs, a pipe, a
file) it degrades to a plain log line whenever the step moves on and at most every few seconds, so a log
never fills with carriage returns. It reads what rank 0 publishes (`progress.json`, a
ProgressSnapshot), the same data the operator puts in a job's status.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.text import Text

from kubetune.api.outcome import ProgressSnapshot

#: A plain progress line is printed when the step or phase changes, at most once per this many seconds.
PLAIN_LINE_INTERVAL_SECONDS = 5.0
#: Seconds between two reads of progress.json.
POLL_SECONDS = 1.0


def read_snapshot(path: Path) -> ProgressSnapshot | None:
    """The latest snapshot, or None before the first one (or while it is being replaced)."""
    try:
        return ProgressSnapshot.model_validate_json(path.read_text())
    except (OSError, ValidationError):
        return None


def _duration(seconds: float | int | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def describe(snapshot: ProgressSnapshot | None, attempt: int, restarts: int) -> str:
    """One line: step/total, losses, tokens/s, ETA, restarts."""
    if snapshot is None:
        return f"attempt {attempt}: starting (loading model and data)…"
    p, m = snapshot.progress, snapshot.metrics
    return (
        f"step {p.step}/{p.total_steps} ({p.percent}%) epoch {p.epoch:.2f} | train loss {_number(m.train_loss)} | "
        f"eval loss {_number(m.eval_loss)} (best {_number(m.best_eval_loss)}) | "
        f"{_number(m.tokens_per_second, 3)} tok/s | ETA {_duration(p.eta_seconds)} | "
        f"restarts {restarts} | {snapshot.phase.lower()}"
    )


class ProgressDisplay:
    """Shows progress until stopped; runs in a background thread beside the blocking launcher."""

    def __init__(self, progress_file: Path, plain: bool = False, stream: TextIO = sys.stdout) -> None:
        self.progress_file = progress_file
        self.plain = plain or not stream.isatty()
        self.stream = stream
        self.attempt = 1
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, attempt: int, restarts: int) -> None:
        self.attempt, self.restarts = attempt, restarts
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="progress-display", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        if self.plain:
            self._run_plain()
            return
        with Live(Text(""), console=Console(file=self.stream), refresh_per_second=2, transient=False) as live:
            while not self._stop.wait(POLL_SECONDS):
                live.update(Text(describe(read_snapshot(self.progress_file), self.attempt, self.restarts)))

    def _run_plain(self) -> None:
        last, last_time = (-1, ""), 0.0
        while not self._stop.wait(POLL_SECONDS):
            snapshot = read_snapshot(self.progress_file)
            state = (snapshot.progress.step, snapshot.phase) if snapshot else (-1, "")
            if state != last and time.monotonic() - last_time >= PLAIN_LINE_INTERVAL_SECONDS:
                print(describe(snapshot, self.attempt, self.restarts), file=self.stream, flush=True)
                last, last_time = state, time.monotonic()
