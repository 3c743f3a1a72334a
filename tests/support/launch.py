"""Launching real trainer processes for tests: `torchrun --nproc_per_node=2 -m kubetune.cli train`.

Processes run with DS_ACCELERATOR=cpu and one thread each, from the run's own folder, in their own
process group so that a test can SIGKILL the whole gang at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.waiting import GiveUp, eventually

#: Longest a tiny run may take on a busy 2-core machine, in seconds (a hang guard, not a speed goal).
RUN_TIMEOUT = 240


def command(
    manifest: Path, workdir: Path, processes: int = 2, metrics_port: int = 0, extra: tuple[str, ...] = ()
) -> list[str]:
    """The trainer command line; `processes=1` runs `kubetune train` without a launcher."""
    train = ["-m", "kubetune.cli", "train", "--config", str(manifest), "--workdir", str(workdir)]
    train += ["--metrics-port", str(metrics_port), "--termination-message-path", str(workdir / "termination-log")]
    train += list(extra)
    if processes == 1:
        return [sys.executable, *train]
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--nnodes=1"]
    launcher += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    return [sys.executable, *launcher, *train]


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    )
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def start(argv: list[str], workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the command in its own session with output to `<workdir>.log`; (process, log path)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir.with_name(workdir.name + ".log")
    with log.open("ab") as handle:
        process = subprocess.Popen(
            argv, cwd=workdir, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, log


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name (2nd field) may contain spaces; the parent pid is the 2nd field after it.
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_group(process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the launcher and every rank. torchrun starts each rank in a session of its own, so
    the ranks are found by parentage, not by process group."""
    targets = [process.pid, *descendants(process.pid)] if sig == signal.SIGKILL else [process.pid]
    for pid in reversed(targets):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_for_trainer(condition: Any, process: subprocess.Popen[bytes], log: Path, timeout: float = RUN_TIMEOUT) -> None:
    """Poll `condition()` until true; fail with the log when the process ends first or time runs out (then
    the gang is killed first)."""

    def done() -> bool:
        if condition():
            return True
        if process.poll() is not None and not condition():
            raise GiveUp(f"trainer exited with {process.returncode} first")
        return False

    try:
        eventually(done, timeout, interval=0.05, message="the trainer")
    except AssertionError as error:
        if process.poll() is None:
            kill_group(process)
        raise AssertionError(f"{error}:\n{log.read_text()[-6000:]}") from None


@dataclass
class Finished:
    """A trainer run that ended."""

    workdir: Path
    returncode: int
    log: str

    def result(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.workdir / "result.json").read_text())
        return loaded

    def metrics(self, kind: str = "train") -> list[dict[str, Any]]:
        lines = (self.workdir / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["kind"] == kind]

    def trace(self, prefix: str = "trace") -> list[dict[str, Any]]:
        """Rank 0's data trace (KUBETUNE_TRACE_DATA), one entry per step."""
        path = self.workdir / f"{prefix}.rank0.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(manifest: Path, workdir: Path, processes: int = 2, extra: tuple[str, ...] = (), **env: str) -> Finished:
    """Run the trainer to the end."""
    process, log = start(command(manifest, workdir, processes, extra=extra), workdir, environment(**env))
    try:
        process.wait(timeout=RUN_TIMEOUT)
    finally:
        kill_group(process)
    return Finished(workdir, process.returncode, log.read_text())


def trace_env(workdir: Path) -> dict[str, str]:
    return {"KUBETUNE_TRACE_DATA": str(workdir / "trace")}
