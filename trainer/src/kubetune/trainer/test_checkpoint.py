"""Checkpoint verification and retention — on folders written by hand, no DeepSpeed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.trainer.checkpoint import STATE_FILE, file_sizes, problem, published, retained, step_name

pytestmark = pytest.mark.timeout(30)


def write_checkpoint(directory: Path, step: int) -> Path:
    folder = directory / step_name(step)
    (folder / "ds").mkdir(parents=True)
    (folder / "ds" / "model_states.pt").write_bytes(b"x" * 100)
    (folder / "rng-rank0.pt").write_bytes(b"y" * 10)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "files": file_sizes(folder)}))
    return folder


def test_a_complete_checkpoint_has_no_problem(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path, 8)
    assert problem(folder) is None
    assert json.loads((folder / STATE_FILE).read_text())["files"] == {"ds/model_states.pt": 100, "rng-rank0.pt": 10}


def test_truncated_missing_or_unrecorded_files_are_problems(tmp_path: Path) -> None:
    truncated = write_checkpoint(tmp_path, 4)
    (truncated / "ds" / "model_states.pt").write_bytes(b"x" * 50)
    assert problem(truncated) == "ds/model_states.pt has 50 bytes, 100 were written"
    missing = write_checkpoint(tmp_path, 8)
    (missing / "rng-rank0.pt").unlink()
    assert problem(missing) == "rng-rank0.pt is missing"
    no_state = write_checkpoint(tmp_path, 12)
    (no_state / STATE_FILE).unlink()
    assert problem(no_state) == f"{STATE_FILE} is missing"
    garbled = write_checkpoint(tmp_path, 16)
    (garbled / STATE_FILE).write_text("{")
    assert "unreadable" in (problem(garbled) or "")


def test_published_lists_step_folders_newest_first(tmp_path: Path) -> None:
    for step in (4, 12, 8):
        write_checkpoint(tmp_path, step)
    (tmp_path / f".partial-{step_name(16)}").mkdir()
    (tmp_path / "latest").write_text(step_name(12))
    assert [step for step, _ in published(tmp_path)] == [12, 8, 4]
    assert published(tmp_path / "absent") == []


@pytest.mark.parametrize(
    ("steps", "keep", "best", "expected"),
    [
        ([4, 8, 12, 16], 2, None, {12, 16}),
        ([4, 8, 12, 16], 2, 4, {4, 12, 16}),
        ([4, 8, 12, 16], 1, 16, {16}),
        ([4], 3, None, {4}),
    ],
)
def test_retention_keeps_the_newest_and_the_best(
    steps: list[int], keep: int, best: int | None, expected: set[int]
) -> None:
    assert retained(steps, keep, best) == expected


@pytest.mark.parametrize(("rank", "local_rank", "cleans"), [(0, 0, True), (2, 0, True), (3, 1, False)])
def test_partials_are_cleaned_by_the_first_process_of_every_node(
    tmp_path: Path, rank: int, local_rank: int, cleans: bool
) -> None:
    from kubetune.trainer.checkpoint import Checkpointer
    from kubetune.trainer.distributed import Rank

    partial = tmp_path / f".partial-{step_name(8)}"
    (partial / "ds").mkdir(parents=True)
    kept = write_checkpoint(tmp_path, 4)
    Checkpointer(tmp_path, 2, Rank(rank, 4, local_rank, "cpu")).clean_partials()
    assert partial.exists() is not cleans and kept.exists()


def test_parameter_counts_read_zero3_partition_metadata() -> None:
    import torch

    from kubetune.trainer.distributed import numel

    placeholder = torch.nn.Parameter(torch.empty(0))
    placeholder.ds_numel = 4096  # type: ignore[attr-defined]  # what DeepSpeed's ZeRO-3 sets
    assert (numel(placeholder), numel(torch.nn.Parameter(torch.ones(3, 5)))) == (4096, 15)
