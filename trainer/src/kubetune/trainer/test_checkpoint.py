"""Checkpoint layout and retention — on folders written by hand, no DeepSpeed (resume: test_resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.trainer.checkpoint import published, retained, step_name

pytestmark = pytest.mark.timeout(30)


def write_checkpoint(directory: Path, step: int) -> Path:
    folder = directory / step_name(step)
    (folder / "ds").mkdir(parents=True)
    (folder / "ds" / "model_states.pt").write_bytes(b"x" * 100)
    return folder


def test_published_lists_step_folders_newest_first(tmp_path: Path) -> None:
    for step in (4, 12, 8):
        write_checkpoint(tmp_path, step)
    (tmp_path / f".partial-{step_name(16)}").mkdir()
    (tmp_path / "latest").write_text(step_name(12))
    assert [step for step, _ in published(tmp_path)] == [12, 8, 4]
    assert published(tmp_path / "absent") == []


@pytest.mark.parametrize(
    ("steps", "keep", "best", "resumed_from", "passed_over", "expected"),
    [
        ([4, 8, 12, 16], 2, None, None, set(), {12, 16}),
        ([4, 8, 12, 16], 2, 4, None, set(), {4, 12, 16}),
        ([4, 8, 12, 16], 1, 16, None, set(), {16}),
        ([4], 3, None, None, set(), {4}),
        # Fell back from a damaged 100 to 80, then saved 90 (keep: 1): nothing goes. Before, the damaged
        # 100 took the one place and the fresh 90 and 80 were deleted.
        ([80, 90, 100], 1, None, 80, {100}, {80, 90, 100}),
        # ... then saved 100 again (the save replaced the damaged one, no longer passed over).
        ([80, 90, 100], 1, None, 80, set(), {80, 100}),
        # The checkpoint resumed from stays for the whole attempt; the others roll as usual.
        ([80, 84, 88, 100], 1, None, 80, {100}, {80, 88, 100}),
        ([80, 84, 88, 100], 2, None, 80, {100}, {80, 84, 88, 100}),
        ([80, 84, 88, 92, 100], 2, None, 80, {100}, {80, 88, 92, 100}),
        # Two passed over, newer than everything kept: both stay until the run saves those steps.
        ([80, 84, 96, 100], 1, None, 80, {96, 100}, {80, 84, 96, 100}),
        # Passed over but older than a kept checkpoint: superseded, pruned like any other.
        ([70, 80, 84], 1, None, 80, {70}, {80, 84}),
        # Nothing usable at all (every checkpoint passed over): pruning deletes none of them.
        ([96, 100], 1, None, None, {96, 100}, {96, 100}),
        # The best is kept whatever else happens.
        ([40, 80, 84, 100], 1, 40, 80, {100}, {40, 80, 84, 100}),
    ],
)
def test_retention_never_lets_a_passed_over_checkpoint_push_out_a_good_one(
    steps: list[int], keep: int, best: int | None, resumed_from: int | None, passed_over: set[int], expected: set[int]
) -> None:
    assert retained(steps, keep, best, resumed_from, frozenset(passed_over)) == expected


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
