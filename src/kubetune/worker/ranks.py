"""A worker pod's ranks as one process group: started for one attempt, stopped as a whole, reaped once.

The in-pod supervisor (kubetune.worker.supervisor) runs torchrun, which runs the ranks, for one attempt
after another inside the same container. Between two attempts nothing of the old one may survive: a
rank left behind would hold the rendezvous port, the GPU's memory or the checkpoint folder's fence. So
torchrun starts in a session (and process group) of its own, and a stop signals the whole group: SIGTERM
to the launcher alone (torchrun forwards it to its ranks, which checkpoint, exactly as when the kubelet
stops the container), then SIGKILL to every process below the launcher once the grace period is over or
the launcher has gone. Not only to its process group: torch's launcher starts each rank in a session of
its own. Ranks whose launcher died are handed to the container's init, the supervisor itself, and are
killed as its descendants (`kill_group(everything=True)`, only as PID 1: anywhere else the supervisor's
other descendants are not the attempt's).

Exit codes read as a shell and Kubernetes report them: 128 + N for death by signal N.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubetune.policies.observed import SIGNAL_EXIT_BASE


def shell_exit_code(returncode: int) -> int:
    """Python reports death by signal N as -N; shells and Kubernetes as 128 + N."""
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class RankGroupEnd:
    """How one attempt's process group ended."""

    exit_code: int
    """The launcher's exit code, 128 + N when a signal killed it."""
    stopped: bool
    """The supervisor stopped it (a SIGTERM it sent), rather than it ending by itself."""


class RankGroup:
    """One attempt's launcher process and everything it started."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        # A session of its own: its process group id is its pid, and no signal meant for the supervisor's
        # group (a terminal's Ctrl-C) reaches the ranks except through the supervisor.
        self._process = subprocess.Popen(list(command), env=dict(env), start_new_session=True)
        self._stop_sent = threading.Event()
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._process.pid

    def running(self) -> bool:
        return self._process.poll() is None

    def terminate(self) -> None:
        """SIGTERM the launcher, once (not its ranks: it forwards the signal to them itself; a second SIGTERM
        would make torch's launcher give up waiting for them and leave their checkpoint half written)."""
        with self._lock:
            if self._stop_sent.is_set():
                return
            self._stop_sent.set()
            if self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)

    def kill_group(self, everything: bool = False) -> None:
        """SIGKILL the launcher and every process below it (its ranks, in sessions of their own), and with
        `everything` every descendant of this process too (as PID 1: ranks orphaned by a dead launcher)."""
        with self._lock:
            # Once reaped, the launcher's pid may name another process: it is left alone then.
            alive = self._process.poll() is None
            doomed = descendants(self._process.pid) | {self._process.pid} if alive else set()
            if everything:
                doomed |= descendants(os.getpid())
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> RankGroupEnd | None:
        """The group's end once its launcher has exited; None if it still runs after `timeout` seconds."""
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return RankGroupEnd(shell_exit_code(code), self._stop_sent.is_set())

    def stop(self, grace_seconds: float) -> RankGroupEnd:
        """SIGTERM the launcher, wait up to `grace_seconds` for it, then SIGKILL the group: a rank that
        outlived its launcher (ignoring SIGTERM, or forked away from it) must not run into the next
        attempt."""
        self.terminate()
        end = self.wait(grace_seconds)
        self.kill_group()
        if end is None:
            end = RankGroupEnd(shell_exit_code(self._process.wait()), True)
        return end


def descendants(root: int) -> set[int]:
    """Every process below `root` now (children, their children, ...), from /proc; empty without /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])  # field 4, after the command's ")"
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def reap_orphans() -> int:
    """Collect the exit status of every child that has ended, and return how many. The supervisor is PID 1
    of its container, so ranks that outlived their launcher become its children once killed; unreaped they
    would stay zombies for the pod's life. Call only while no launcher runs: it would take its status from
    Popen."""
    reaped = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children at all
            return reaped
        if pid == 0:  # children left, none ended yet
            return reaped
        reaped += 1
