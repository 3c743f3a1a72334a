"""The worker pod's supervisor: runs the ranks attempt after attempt in one container, when told to.

Restarting a gang by recreating its pods costs a scheduling pass, a container start, Python's and
torch's imports and everything the pod's start-up does, on every worker, for every failure (issue 29,
docs/benchmarks.md section 5). For a failure that leaves the pods healthy (a rank's process exits or is
killed, a lost peer, a retryable trainer error), the pods can stay: only their ranks stop and start
again. This is the process in the pod that makes that possible. It is deliberately not a decision
maker: the operator stays the one that counts restarts, applies `maxRestarts`, the backoff and the
retry classes (kubetune.policies.retry), and reports each restart. The supervisor only

- runs the launcher (torchrun) for one attempt at a time, in a process group of its own
  (kubetune.worker.ranks), with the attempt (KUBETUNE_ATTEMPT), the attempt's rank 0 token and a
  rendezvous id of that attempt in the ranks' environment;
- when the launcher ends by itself, keeps its exit code and the trainer's termination message (read as
  the kubelet reads it, capped at 4096 bytes) and waits for an order (`hold_seconds`);
- stops the ranks when told (`stop`), and starts attempt N+1 when told (`start`), never while an older
  attempt still runs: an order to start is refused until the previous attempt has ended;
- ends the container as the launcher would have ended it: at once when the attempt succeeded (exit 0),
  on SIGTERM (forwarded to the launcher as the kubelet would have sent it), or, after a failure, once
  no order came within `hold_seconds` (then with the failed attempt's exit code; its termination
  message is still in place for the kubelet). With `hold_seconds` 0 it behaves exactly as torchrun as
  the container's command did: the recreate path.

Orders arrive over HTTP (kubetune.worker.endpoint). Everything here is thread-safe under one lock; the
main thread runs `run()`, which only waits and ends the container.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kubetune.api.invocation import ATTEMPT_ENV, RANK0_TOKEN_ENV
from kubetune.api.outcome import TERMINATION_MESSAGE_LIMIT
from kubetune.api.worker import WORKER_TOKEN_ENV, AttemptPhase, WorkerState
from kubetune.worker.ranks import RankGroup, reap_orphans

logger = logging.getLogger(__name__)

#: torchrun reads each of its flags from `PET_<FLAG>` when not given: the rendezvous id keeps two
#: attempts' keys apart in the rendezvous store (`--rdzv-id`, "none" by default).
RENDEZVOUS_ID_ENV = "PET_RDZV_ID"
#: Seconds between two looks of the main thread at the ranks (also the longest a SIGTERM waits).
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class AttemptState:
    """What the supervisor says of its current attempt (GET /state)."""

    attempt: int
    phase: AttemptPhase
    exit_code: int | None = None
    """The launcher's exit code once ended (128 + N for signal N); None while it runs."""
    stopped: bool = False
    """It ended because it was told to stop (or the pod was being stopped)."""
    termination_message: str | None = None
    """What the trainer left at the termination message path, at most 4096 bytes; None if nothing."""
    ended_at: float | None = None
    """time.monotonic() at its end (not sent: clocks of two machines are never compared)."""

    def to_wire(self) -> dict[str, object]:
        wire = WorkerState(
            attempt=self.attempt,
            phase=self.phase,
            exit_code=self.exit_code,
            stopped=self.stopped,
            termination_message=self.termination_message,
        )
        return wire.model_dump(by_alias=True)


class OrderRefused(Exception):
    """An order the supervisor cannot carry out now; its message says why (sent back as the answer)."""


def read_termination_message(path: Path) -> str | None:
    """The termination message as the kubelet reads it: at most 4096 bytes, None when absent or empty."""
    try:
        with path.open("rb") as handle:
            data = handle.read(TERMINATION_MESSAGE_LIMIT)
    except OSError:
        return None
    return data.decode("utf-8", errors="replace") or None


@dataclass(frozen=True)
class SupervisorSettings:
    """How the supervisor runs the ranks."""

    command: tuple[str, ...]
    """The launcher's command line (torchrun ... -m kubetune.cli train ...)."""
    first_attempt: int
    """The attempt the pod was created for; its ranks start at once."""
    termination_message_path: Path
    """Where the trainer writes its result for the kubelet (emptied before each attempt starts)."""
    hold_seconds: float
    """How long a failed attempt's container waits for an order before it ends with the failure; 0: never
    (the recreate path)."""
    grace_seconds: float
    """How long a stopped launcher gets to end before its group is killed (its checkpoint's time)."""
    reaps_orphans: bool = False
    """Collect ended orphans (kubetune.worker.ranks.reap_orphans): only as PID 1, the container's init, to
    which they are handed; anywhere else it would take other children's exit statuses."""


class WorkerSupervisor:
    """The ranks of one worker pod across attempts; see the module's docstring."""

    def __init__(
        self,
        settings: SupervisorSettings,
        environment: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._environment = dict(environment)
        self._clock = clock
        self._lock = threading.Lock()
        self._terminating = threading.Event()
        self._group: RankGroup | None = None
        self._closing = False
        """`run` has decided the container ends: no order starts anything any more."""
        # The first attempt's ranks start in `run`, after the caller has installed its signal handlers.
        self._state = AttemptState(settings.first_attempt, "running")

    # --- orders (any thread) ---

    def state(self) -> AttemptState:
        with self._lock:
            return self._state

    def running(self) -> bool:
        """Whether the current attempt's ranks run (the readiness probe's answer)."""
        with self._lock:
            return self._state.phase == "running"

    def stop(self, attempt: int) -> AttemptState:
        """Stop `attempt`'s ranks (in the background: SIGTERM, then SIGKILL after the grace period). Stopping
        an attempt that has ended, or an older one, changes nothing."""
        with self._lock:
            if attempt > self._state.attempt:
                raise OrderRefused(f"attempt {attempt} was never started here (this pod runs {self._state.attempt})")
            if attempt < self._state.attempt or self._state.phase != "running" or self._group is None:
                return self._state
            group = self._group
            self._state = replace(self._state, phase="stopping", stopped=True)
        threading.Thread(target=group.stop, args=(self.settings.grace_seconds,), daemon=True).start()
        return self.state()

    def start(self, attempt: int, rank0_token: str | None) -> AttemptState:
        """Start `attempt`'s ranks. Starting the attempt that already runs changes nothing (an order sent
        twice); an older attempt, or one while the current attempt still runs, is refused."""
        with self._lock:
            current = self._state
            if attempt == current.attempt and current.phase != "ended":
                return current
            if attempt <= current.attempt:
                raise OrderRefused(f"attempt {attempt} is not newer than this pod's attempt {current.attempt}")
            if current.phase != "ended":
                raise OrderRefused(
                    f"attempt {current.attempt} is still {current.phase}: stop it and wait for its end first"
                )
            if self._terminating.is_set() or self._closing:
                raise OrderRefused("the pod is stopping")
            self._start_locked(attempt, rank0_token)
            return self._state

    def _start_locked(self, attempt: int, rank0_token: str | None) -> None:
        if self.settings.reaps_orphans:
            reap_orphans()  # before the new launcher exists: its status is Popen's
        # The next attempt's result must not be read from the last one's words. Emptied, not removed: the
        # kubelet bind-mounts the file, and a mount point cannot be unlinked.
        with contextlib.suppress(OSError):
            self.settings.termination_message_path.write_bytes(b"")
        env = self._environment | {ATTEMPT_ENV: str(attempt), RENDEZVOUS_ID_ENV: f"attempt-{attempt}"}
        if rank0_token is not None:
            env[RANK0_TOKEN_ENV] = rank0_token
        self._group = RankGroup(self.settings.command, env)
        self._state = AttemptState(attempt, "running")
        logger.info("attempt %d: ranks started (launcher pid %d)", attempt, self._group.pid)

    # --- the main thread ---

    def terminate(self) -> None:
        """The pod is being stopped (SIGTERM): stop the ranks and end the container once they have."""
        self._terminating.set()

    def run(self) -> int:
        """Start the first attempt and supervise until the container should end; the exit code it should
        end with."""
        with self._lock:
            if self._terminating.is_set():  # stopped before anything started
                self._closing = True
                return 128 + signal.SIGTERM
            self._start_locked(self.settings.first_attempt, None)
        while True:
            with self._lock:
                group, state = self._group, self._state
                forward = self._terminating.is_set() and state.phase == "running" and group is not None
                if forward:  # "stopping" from now on: an order to stop finds the stop under way
                    self._state = replace(state, phase="stopping", stopped=True)
            if forward and group is not None:
                threading.Thread(target=group.stop, args=(self.settings.grace_seconds,), daemon=True).start()
            end = group.wait(POLL_SECONDS) if group is not None and state.phase != "ended" else None
            if end is not None and group is not None:
                group.kill_group(everything=self.settings.reaps_orphans)  # ranks that outlived their launcher
                self._record_end(end.exit_code, end.stopped)
                with self._lock:
                    if self.settings.reaps_orphans and self._state.phase == "ended":  # no new launcher yet
                        reap_orphans()
            elif state.phase == "ended":
                time.sleep(POLL_SECONDS)
            with self._lock:  # read again: an order may have started the next attempt meanwhile
                code = self._exit_code(self._state)
                self._closing = code is not None
            if code is not None:
                return code

    def _record_end(self, exit_code: int, stopped: bool) -> None:
        message = read_termination_message(self.settings.termination_message_path)
        with self._lock:
            self._state = replace(
                self._state,
                phase="ended",
                exit_code=exit_code,
                stopped=self._state.stopped or stopped,
                termination_message=message,
                ended_at=self._clock(),
            )
            logger.info("attempt %d: ranks ended with exit code %d", self._state.attempt, exit_code)

    def _exit_code(self, state: AttemptState) -> int | None:
        """When the container ends, with which code; None: keep supervising."""
        if state.phase != "ended" or state.exit_code is None:
            return None
        if self._terminating.is_set() or state.exit_code == 0:
            return state.exit_code
        ended_at = state.ended_at if state.ended_at is not None else self._clock()
        return state.exit_code if self._clock() - ended_at >= self.settings.hold_seconds else None


def install_signal_handlers(supervisor: WorkerSupervisor) -> None:
    """SIGTERM and SIGINT stop the ranks and end the container (the supervisor is PID 1 in its pod, which
    has no default action for either)."""

    def handler(signum: int, frame: object) -> None:
        supervisor.terminate()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def supervisor_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ranks' environment: the container's, without the supervisor's own token."""
    env = dict(os.environ if base is None else base)
    env.pop(WORKER_TOKEN_ENV, None)
    return env


def command_of(argv: Sequence[str]) -> tuple[str, ...]:
    """The launcher's command: everything after `--`."""
    if "--" not in argv:
        raise ValueError("give the launcher's command after `--`")
    command = tuple(argv[list(argv).index("--") + 1 :])
    if not command:
        raise ValueError("the launcher's command after `--` is empty")
    return command
