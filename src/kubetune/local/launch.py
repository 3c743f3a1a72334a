"""One attempt of a local gang: N trainer ranks started by torch's elastic launcher, and how each ended.

torch.distributed's elastic agent is the same machinery torchrun uses inside a pod: it runs the
rendezvous, sets RANK/WORLD_SIZE/MASTER_ADDR for each rank, watches the processes and, on Ctrl-C or
SIGTERM, forwards the signal to the ranks and waits for them to checkpoint before it kills them. Its own
restarts are turned off (`max_restarts=0`): whether and when to restart the gang is decided by the same
policy code the operator uses, one level up in the runner.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.api import LogsDest, LogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from kubetune.api.invocation import free_port

# The launcher runs off the main thread (the runner keeps the main thread for its own signal handling and
# status updates), where torch warns on every attempt that it installs no signal handlers: expected here.
logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.ERROR)

#: Seconds the ranks get to checkpoint after Ctrl-C / SIGTERM before they are killed.
GRACEFUL_SHUTDOWN_SECONDS = 300


@dataclass(frozen=True)
class RankExit:
    """How one rank of an attempt ended."""

    rank: int
    exit_code: int
    """0 for success, the process's code otherwise, 128+N when killed by signal N (as a shell reports it)."""
    log_path: Path


@dataclass(frozen=True)
class AttemptOutcome:
    """How one attempt of the gang ended."""

    exits: list[RankExit]


class AttemptLogs(LogsSpecs):
    """One log file per rank and attempt: `logs/attempt-<n>/rank-<r>.log` (stdout and stderr together; the
    rank entry point joins its stderr to its stdout)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(log_dir=str(folder))
        self.folder = folder

    @property
    def root_log_dir(self) -> str:
        return str(self.folder)

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        self.folder.mkdir(parents=True, exist_ok=True)
        stdouts = {rank: str(self.folder / f"rank-{rank}.log") for rank in envs}
        errors = {rank: str(self.folder / f"rank-{rank}.error.json") for rank in envs}
        for rank, env in envs.items():
            env["TORCHELASTIC_ERROR_FILE"] = errors[rank]
        return LogsDest(stdouts=stdouts, stderrs=dict.fromkeys(envs, ""), error_files=errors)


def run_attempt(
    *,
    run_id: str,
    processes: int,
    trainer_args: list[str],
    log_folder: Path,
    env: dict[str, str],
) -> AttemptOutcome:
    """Run `kubetune <trainer_args>` (`train ...`) as `processes` ranks until they all end; never raises for a
    rank's failure or a signal: both are reported in the outcome."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
        logs_specs=AttemptLogs(log_folder),
        shutdown_timeout=GRACEFUL_SHUTDOWN_SECONDS,
    )
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the agent passes its own environment on to the ranks
    logs = {rank: log_folder / f"rank-{rank}.log" for rank in range(processes)}
    try:
        elastic_launch(config, sys.executable)("-m", "kubetune.local.rank", *trainer_args)
        return AttemptOutcome([RankExit(rank, 0, logs[rank]) for rank in range(processes)])
    except ChildFailedError as error:
        codes = {rank: _shell_code(failure.exitcode) for rank, failure in error.failures.items()}
        return AttemptOutcome([RankExit(rank, codes.get(rank, 0), logs[rank]) for rank in range(processes)])
    except SignalException as stop:  # which signal stopped the run, the runner's own handler records
        return AttemptOutcome([RankExit(r, 128 + int(stop.sigval), logs[r]) for r in range(processes)])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _shell_code(exitcode: int) -> int:
    """Python reports death by signal N as -N; shells and Kubernetes as 128+N."""
    return 128 - exitcode if exitcode < 0 else exitcode
