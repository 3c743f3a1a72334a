"""Fencing between attempts with real ranks: a hung gang that wakes up beside a newer attempt writes nothing.

A two-rank run (attempt 1) is frozen with SIGSTOP, as a node whose runtime hangs while its processes live;
meanwhile "attempt 2" claims the checkpoint folder and writes files of its own there. Once the old gang
runs again, its next checkpoint finds the newer epoch: every rank stops Superseded, no new step folder
appears, nothing is pruned or exported, and every file of the newer attempt is unchanged, by content.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.outcome import ExitReason, TrainerResult
from kubetune.trainer.fencing import Epoch, read_epoch, write_epoch
from tests.support import launch, tiny

EVERY_STEPS = 4
OVERRIDES: dict[str, Any] = {"hyperparameters": {"epochs": 3}, "checkpointing": {"everySteps": EVERY_STEPS, "keep": 2}}
UID = "0b9e-fencing-test"


def newest_step(checkpoints: Path) -> int:
    latest = checkpoints / "latest"
    return int(latest.read_text().strip().removeprefix("step-")) if latest.exists() else 0


def contents(folder: Path, skip: set[str]) -> dict[str, bytes]:
    """Every file under `folder` by content, but those under a top-level entry named in `skip`."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).parts[0] not in skip
    }


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@pytest.mark.timeout(420)
def test_a_superseded_gang_stops_at_its_next_checkpoint_and_changes_no_file_of_the_newer(
    tmp_path: Path, tiny_model: Path
) -> None:
    train, validation = tiny.write_dataset(tmp_path / "data", "prompt-completion", train=160, validation=16)
    manifest = tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, OVERRIDES)
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    env = launch.environment(KUBETUNE_JOB_UID=UID, KUBETUNE_ATTEMPT="1")
    process, log = launch.start(launch.command(manifest, workdir), workdir, env)
    try:
        launch.wait_for_trainer(lambda: newest_step(checkpoints) >= EVERY_STEPS, process, log)
        assert read_epoch(checkpoints) == Epoch(UID, 1)
        gang = [process.pid, *launch.descendants(process.pid)]
        signal_all(gang, signal.SIGSTOP)  # the node hangs; its processes live on
        try:
            old_partials = {p.name for p in checkpoints.glob(".partial-*")}  # a save it was in the middle of
            old_steps = {p.name for p in checkpoints.glob("step-*")}
            step_when_superseded = json.loads((workdir / "progress.json").read_text())["progress"]["step"]
            # Attempt 2, started elsewhere on the same folder: its epoch, a checkpoint, a save in progress.
            write_epoch(checkpoints, Epoch(UID, 2))
            newer = {
                "step-00000500/ds/mp_rank_00_model_states.pt": b"weights of attempt 2",
                "step-00000500/manifest.json": b"{}",
                ".partial-step-00000504/ds/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"attempt 2 writing",
                "latest": b"step-00000500\n",
            }
            for name, data in newer.items():
                (checkpoints / name).parent.mkdir(parents=True, exist_ok=True)
                (checkpoints / name).write_bytes(data)
            before = contents(checkpoints, skip=old_partials)
        finally:
            signal_all(gang, signal.SIGCONT)
        process.wait(timeout=launch.RUN_TIMEOUT)
    finally:
        launch.kill_group(process)
    text = log.read_text()
    result = TrainerResult.model_validate(launch.Finished(workdir, process.returncode, text).result())
    assert (result.outcome, result.reason, result.retryable) == ("Failed", "Superseded", False), text[-4000:]
    assert f"(exitcode: {ExitReason.SUPERSEDED.exit_code})" in text, "the ranks did not exit Superseded"
    assert f"held by attempt 2 of job {UID}, this rank is attempt 1 of job {UID}" in result.message
    assert result.step <= step_when_superseded + EVERY_STEPS, "it trained past its next checkpoint"
    assert {p.name for p in checkpoints.glob("step-*")} == old_steps | {"step-00000500"}, "a step was published"
    assert contents(checkpoints, skip=old_partials) == before, "a file in the folder was changed"
    assert read_epoch(checkpoints) == Epoch(UID, 2)
    assert not (workdir / "output").exists(), "the superseded run exported"
