"""The trainer's invocation contract: the command line and environment of one rank, written once.

Two supervisors start trainer ranks — the operator (a pod's `torchrun ... -m kubetune.cli train ...`)
and the local runner (`kubetune run`, one process per rank) — and the `train` sub-command parses what
they pass. All three use `TrainerInvocation`: supervisors build one and call `argv()` and `env()`, the
CLI declares its flags with `add_arguments` and reads them back with `from_args`. Renaming a flag is one
edit here, and a round-trip test (test_invocation.py) fails if the two directions ever disagree.

The exit codes a user sees from the command line are defined here too, beside the trainer's own
(`ExitReason` in outcome.py, which they build on).
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, fields
from typing import Any, Final

from kubetune.api.outcome import ExitReason

#: The gang attempt a rank belongs to (1, 2, ...); the trainer stamps it on its result and metrics.
ATTEMPT_ENV: Final = "KUBETUNE_ATTEMPT"
#: The job's uid (the FineTuneJob's metadata.uid; `kubetune run`: one per workdir). With the attempt it is
#: the epoch the rank fences the checkpoint folder with (kubetune.trainer.fencing).
JOB_UID_ENV: Final = "KUBETUNE_JOB_UID"
#: DeepSpeed's accelerator selection, read when DeepSpeed is imported: `cpu` for CPU-only ranks.
ACCELERATOR_ENV: Final = "DS_ACCELERATOR"
#: Where `pvc://claim/path` URIs are mounted inside a pod (one folder per claim).
PVC_ROOT_ENV: Final = "KUBETUNE_PVC_ROOT"
#: The attempt's token for rank 0's endpoints (`Authorization: Bearer <token>` on /progress and /result):
#: made by the operator for each attempt, in the pod's spec, so only who may read the pod may use them.
#: Unset (`kubetune run`, which reads progress from files): the endpoints ask for none.
RANK0_TOKEN_ENV: Final = "KUBETUNE_RANK0_TOKEN"
#: How long torchrun (torch elastic's agent) waits for its ranks after forwarding SIGTERM before it
#: SIGKILLs them, in seconds. The pinned torch (2.13) reads it when `--shutdown-timeout` is not given
#: (`torch.distributed.launcher.api.LaunchConfig`; 30 s without it); an older torchrun ignores it and
#: waits its fixed 30 s. An environment variable rather than the flag, because an older torchrun refuses
#: an unknown flag.
SHUTDOWN_TIMEOUT_ENV: Final = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"

#: Exit code of every command for bad input (a manifest, file or flag that is wrong): the trainer's
#: InvalidConfig, and the usage-error code of command-line tools.
EXIT_BAD_INPUT: Final = ExitReason.INVALID_CONFIG.exit_code
#: Exit code of `kubetune run` when the job failed for a reason other than bad input.
EXIT_FAILED: Final = 1


def free_port() -> int:
    """A TCP port free on the loopback interface now: a rank's rendezvous or MASTER_PORT when no launcher
    chose one (the OS's choice; another process may take it first, as with any such probe)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def attempt_from_environment() -> int | None:
    """The attempt a supervisor started this rank for (KUBETUNE_ATTEMPT); None when run by hand."""
    value = os.environ.get(ATTEMPT_ENV, "")
    return int(value) if value.isdigit() else None


def job_uid_from_environment() -> str | None:
    """The uid of the job a supervisor started this rank for (KUBETUNE_JOB_UID); None when run by hand."""
    return os.environ.get(JOB_UID_ENV, "").strip() or None


def accelerator_environment(accelerator: str) -> dict[str, str]:
    """What DeepSpeed and torch must see before they are imported, for ranks on `accelerator`."""
    if accelerator == "cpu":
        return {ACCELERATOR_ENV: "cpu", "CUDA_VISIBLE_DEVICES": ""}
    return {}


@dataclass(frozen=True)
class _Flag:
    flag: str
    help: str
    metavar: str | None = None


#: The `train` sub-command's flags, by TrainerInvocation field.
_FLAGS: Final = {
    "config": _Flag("--config", "the FineTuneJob manifest", "FILE"),
    "workdir": _Flag("--workdir", "base for checkpoints and output when storage is unset"),
    "checkpoint_dir": _Flag("--checkpoint-dir", "checkpoint directory (overrides the manifest)"),
    "output_dir": _Flag("--output-dir", "export directory (overrides the manifest)"),
    "metrics_port": _Flag("--metrics-port", "rank 0's Prometheus/progress port; 0 = off"),
    "metrics_linger_seconds": _Flag(
        "--metrics-linger-seconds",
        "keep serving /metrics and /progress this many seconds after the run ends, so that a scraper sees the "
        "final values; SIGTERM ends the wait. 0 = exit at once",
    ),
    "result_handover_seconds": _Flag(
        "--result-handover-seconds",
        "after the run, rank 0 serves its whole result at GET /result until the supervisor confirms it "
        "(DELETE /result) or this many seconds pass; SIGTERM ends the wait. 0 = no handover (the supervisor "
        "reads result.json)",
    ),
    "termination_message_path": _Flag(
        "--termination-message-path",
        "where the final one-line result goes for Kubernetes (written when the path's folder exists)",
    ),
}


@dataclass(frozen=True)
class TrainerInvocation:
    """One rank's `kubetune train` command line and environment."""

    config: str
    """Path of the FineTuneJob manifest the rank reads."""
    workdir: str = "."
    """Folder for progress/result files, and base of checkpoints and output when storage is unset."""
    checkpoint_dir: str | None = None
    """Checkpoint folder; None = the manifest's `storage.checkpoints` (or `<workdir>/checkpoints`)."""
    output_dir: str | None = None
    """Export folder; None = the manifest's `storage.output` (or `<workdir>/output`)."""
    metrics_port: int = 9400
    """TCP port of rank 0's /metrics and /progress; 0 turns the endpoint off."""
    metrics_linger_seconds: float = 0.0
    """Seconds rank 0 keeps serving its endpoint after the run ends (so a scraper sees the end)."""
    result_handover_seconds: float = 0.0
    """Seconds rank 0 waits, after the run, for the supervisor to take its whole result from GET /result
    (the operator: the termination message is capped at 4096 bytes); 0: no handover."""
    termination_message_path: str = "/dev/termination-log"
    """File for the one-line final result Kubernetes shows; written only when its folder exists."""
    attempt: int | None = None
    """The gang attempt (1, 2, ...), passed as KUBETUNE_ATTEMPT; None = not supervised."""
    job_uid: str | None = None
    """The job's uid, passed as KUBETUNE_JOB_UID; with `attempt`, the epoch that fences the checkpoint
    folder (kubetune.trainer.fencing). None = not supervised: no fencing."""
    accelerator: str | None = None
    """`cpu` or `nvidia-gpu` (spec.distributed.accelerator); None = let the trainer decide."""
    shutdown_timeout_seconds: int | None = None
    """Seconds the launcher gives the ranks to checkpoint and exit after SIGTERM before it kills them,
    passed as TORCH_ELASTIC_SHUTDOWN_TIMEOUT (for the launcher, not a `train` flag); None = torch's default."""

    def argv(self) -> list[str]:
        """`train` and its flags, as `kubetune` (or `python -m kubetune.cli`) takes them."""
        args = ["train"]
        for name, flag in _FLAGS.items():
            value = getattr(self, name)
            if value is not None:
                args += [flag.flag, str(value)]
        return args

    def env(self) -> dict[str, str]:
        """Environment variables of the rank's process (on top of what the launcher sets)."""
        env = accelerator_environment(self.accelerator) if self.accelerator else {}
        if self.attempt is not None:
            env[ATTEMPT_ENV] = str(self.attempt)
        if self.job_uid:
            env[JOB_UID_ENV] = self.job_uid
        if self.shutdown_timeout_seconds is not None:
            env[SHUTDOWN_TIMEOUT_ENV] = str(self.shutdown_timeout_seconds)
        return env

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Declare the `train` sub-command's flags (types and defaults from the fields above)."""
        defaults = {f.name: f.default for f in fields(cls)}
        for name, flag in _FLAGS.items():
            default = defaults[name]
            options: dict[str, Any] = {"help": flag.help, "metavar": flag.metavar}
            if name == "config":
                options["required"] = True
            else:
                options["default"] = default
                options["type"] = type(default) if default is not None else str
            parser.add_argument(flag.flag, **options)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, attempt: int | None = None, job_uid: str | None = None
    ) -> TrainerInvocation:
        """The invocation a parsed `train` command line describes (the environment supplies `attempt` and
        `job_uid`)."""
        return cls(**{name: getattr(args, name) for name in _FLAGS}, attempt=attempt, job_uid=job_uid)
