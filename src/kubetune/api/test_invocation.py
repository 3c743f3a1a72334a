"""The trainer contract round-trips: what a supervisor writes is what `kubetune train` reads."""

from __future__ import annotations

import pytest

from kubetune.api.invocation import (
    ACCELERATOR_ENV,
    ATTEMPT_ENV,
    EXIT_BAD_INPUT,
    JOB_UID_ENV,
    SHUTDOWN_TIMEOUT_ENV,
    TrainerInvocation,
    accelerator_environment,
    attempt_from_environment,
    job_uid_from_environment,
)
from kubetune.api.outcome import ExitReason
from kubetune.cli import build_parser

pytestmark = pytest.mark.timeout(10)

INVOCATIONS = [
    TrainerInvocation(config="job.yaml"),
    TrainerInvocation(
        config="/etc/kubetune/job.yaml",
        workdir="/mnt/scratch/work",
        checkpoint_dir="/mnt/pvc/ckpt/run",
        output_dir="/mnt/pvc/out/run",
        metrics_port=9400,
        termination_message_path="/dev/termination-log",
    ),
    TrainerInvocation(config="a b.yaml", workdir="w", metrics_port=0, metrics_linger_seconds=2.5),
]


@pytest.mark.parametrize("invocation", INVOCATIONS)
def test_argv_parses_back_into_the_same_invocation(invocation: TrainerInvocation) -> None:
    argv = invocation.argv()
    assert argv[0] == "train"
    parsed = build_parser().parse_args(argv)
    assert parsed.command == "train"
    assert TrainerInvocation.from_args(parsed) == invocation


def test_every_train_flag_comes_from_the_contract() -> None:
    """The `train` sub-command declares exactly the contract's flags (plus --help)."""
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    train = commands.choices["train"]  # type: ignore[index]
    declared = {option for action in train._actions for option in action.option_strings} - {"-h", "--help"}
    full = TrainerInvocation(config="c", checkpoint_dir="k", output_dir="o")
    assert declared == {arg for arg in full.argv() if arg.startswith("--")}


@pytest.mark.parametrize(
    ("invocation", "expected"),
    [
        (TrainerInvocation(config="c"), {}),
        (TrainerInvocation(config="c", attempt=3), {ATTEMPT_ENV: "3"}),
        (TrainerInvocation(config="c", attempt=3, job_uid="u-1"), {ATTEMPT_ENV: "3", JOB_UID_ENV: "u-1"}),
        (TrainerInvocation(config="c", attempt=3, job_uid=""), {ATTEMPT_ENV: "3"}),
        (
            TrainerInvocation(config="c", attempt=1, accelerator="cpu"),
            {ATTEMPT_ENV: "1", ACCELERATOR_ENV: "cpu", "CUDA_VISIBLE_DEVICES": ""},
        ),
        (TrainerInvocation(config="c", attempt=2, accelerator="nvidia-gpu"), {ATTEMPT_ENV: "2"}),
        (
            TrainerInvocation(config="c", attempt=1, shutdown_timeout_seconds=55),
            {ATTEMPT_ENV: "1", SHUTDOWN_TIMEOUT_ENV: "55"},
        ),
    ],
)
def test_environment(invocation: TrainerInvocation, expected: dict[str, str]) -> None:
    assert invocation.env() == expected


@pytest.mark.parametrize(("value", "attempt"), [("4", 4), ("", None), ("x", None)])
def test_attempt_from_environment(monkeypatch: pytest.MonkeyPatch, value: str, attempt: int | None) -> None:
    monkeypatch.setenv(ATTEMPT_ENV, value)
    assert attempt_from_environment() == attempt


@pytest.mark.parametrize(("value", "uid"), [("0f3e-77", "0f3e-77"), (" u ", "u"), ("", None), ("  ", None)])
def test_job_uid_from_environment(monkeypatch: pytest.MonkeyPatch, value: str, uid: str | None) -> None:
    monkeypatch.setenv(JOB_UID_ENV, value)
    assert job_uid_from_environment() == uid


def test_the_shutdown_timeout_is_what_the_installed_torchrun_reads() -> None:
    """torch's elastic launcher takes TORCH_ELASTIC_SHUTDOWN_TIMEOUT as its SIGTERM -> SIGKILL wait when no
    `--shutdown-timeout` is given (the pinned torch); the pods pass the grace period that way."""
    launcher = pytest.importorskip("torch.distributed.launcher.api")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SHUTDOWN_TIMEOUT_ENV, "55")
        config = launcher.LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=1)
    assert config.shutdown_timeout == 55


def test_accelerator_environment_and_exit_codes() -> None:
    assert accelerator_environment("nvidia-gpu") == {}
    assert EXIT_BAD_INPUT == ExitReason.INVALID_CONFIG.exit_code == 2
