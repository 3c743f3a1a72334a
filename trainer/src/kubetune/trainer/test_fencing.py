"""Fencing between attempts: the epoch table, the file, and a superseded checkpointer that writes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.outcome import ExitReason
from kubetune.trainer.checkpoint import Checkpointer, step_name
from kubetune.trainer.distributed import Rank
from kubetune.trainer.errors import Superseded, classify
from kubetune.trainer.fencing import (
    EPOCH_FILE,
    Epoch,
    Fence,
    Verdict,
    decide,
    encode,
    epoch_of,
    parse,
    read_epoch,
    write_epoch,
)

pytestmark = pytest.mark.timeout(30)

GO, CLAIM, STOP = Verdict.GO_ON, Verdict.CLAIM, Verdict.STOP
MINE = Epoch("uid-a", 3)
RANK0 = Rank(0, 1, 0, "cpu")


@pytest.mark.parametrize(
    ("found", "starting", "verdict"),
    [
        (Epoch("uid-a", 3), True, GO),
        (Epoch("uid-a", 3), False, GO),
        (None, True, CLAIM),
        (None, False, CLAIM),
        (Epoch("uid-a", 2), True, CLAIM),
        (Epoch("uid-a", 2), False, CLAIM),  # never go back: the newer attempt writes its epoch again
        (Epoch("uid-a", 4), True, STOP),  # a newer attempt started first: this one never trains
        (Epoch("uid-a", 4), False, STOP),
        (Epoch("uid-b", 9), True, CLAIM),  # a re-created job takes the folder over at its start
        (Epoch("uid-b", 1), False, STOP),  # ... and the earlier job's ranks stop at their next check
    ],
)
def test_decide(found: Epoch | None, starting: bool, verdict: Verdict) -> None:
    assert decide(MINE, found, starting) is verdict


@pytest.mark.parametrize(
    ("uid", "attempt", "epoch"),
    [("u", 1, Epoch("u", 1)), ("u", None, None), (None, 2, None), ("", 2, None)],
)
def test_only_a_supervised_rank_is_fenced(uid: str | None, attempt: int | None, epoch: Epoch | None) -> None:
    assert epoch_of(uid, attempt) == epoch


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        (encode(MINE, "node-1/42", 0.0), MINE),
        ('{"format": 1, "jobUid": "u", "attempt": 2}', Epoch("u", 2)),
        ('{"format": 2, "jobUid": "u", "attempt": 2}', None),  # a layout this version does not know
        ('{"format": 1, "jobUid": "", "attempt": 2}', None),
        ('{"format": 1, "jobUid": "u", "attempt": "2"}', None),
        ('{"format": 1, "jobUid": "u", "attempt": true}', None),
        ('{"format": 1, "jobUid": "u"}', None),
        ("[1, 2]", None),
        ('{"format": 1, "jobUid": "u", "att', None),  # torn: never happens with the rename, read as none
        ("", None),
    ],
)
def test_parse(text: str, epoch: Epoch | None) -> None:
    assert parse(text) == epoch


def test_the_epoch_is_written_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    assert read_epoch(folder) is None
    write_epoch(folder, Epoch("u", 1))
    write_epoch(folder, Epoch("u", 2))
    assert read_epoch(folder) == Epoch("u", 2)
    assert [p.name for p in folder.iterdir()] == [EPOCH_FILE]
    assert json.loads((folder / EPOCH_FILE).read_text())["attempt"] == 2


def test_a_newer_attempt_fences_the_older_out(tmp_path: Path) -> None:
    old, new = Fence(tmp_path, Epoch("u", 1), RANK0), Fence(tmp_path, Epoch("u", 2), RANK0)
    old.claim()
    assert old.allows("saving")
    new.claim()
    assert not old.allows("saving") and "attempt 2 of job u" in (old.lost or "")
    assert read_epoch(tmp_path) == Epoch("u", 2)  # the older wrote nothing back
    with pytest.raises(Superseded, match="held by attempt 2 of job u, this rank is attempt 1 of job u"):
        old.agree("saving step-00000008")
    assert new.allows("saving")


def test_an_older_attempt_that_starts_late_never_trains(tmp_path: Path) -> None:
    Fence(tmp_path, Epoch("u", 5), RANK0).claim()
    with pytest.raises(Superseded):
        Fence(tmp_path, Epoch("u", 4), RANK0).claim()
    assert read_epoch(tmp_path) == Epoch("u", 5)


def test_an_interleaved_older_claim_is_overwritten_by_the_newer(tmp_path: Path) -> None:
    """The older read before the newer wrote, and wrote after it: the newer writes its epoch again at its
    next check, and the older then stops."""
    new = Fence(tmp_path, Epoch("u", 2), RANK0)
    new.claim()
    write_epoch(tmp_path, Epoch("u", 1))
    assert new.allows("saving") and read_epoch(tmp_path) == Epoch("u", 2)
    assert not Fence(tmp_path, Epoch("u", 1), RANK0).allows("saving")


def test_a_recreated_job_takes_the_folder_over(tmp_path: Path) -> None:
    earlier = Fence(tmp_path, Epoch("old-uid", 7), RANK0)
    earlier.claim()
    Fence(tmp_path, Epoch("new-uid", 1), RANK0).claim()
    assert not earlier.allows("pruning")


def test_an_unfenced_rank_checks_nothing(tmp_path: Path) -> None:
    fence = Fence(tmp_path, None, RANK0)
    fence.claim()
    write_epoch(tmp_path, Epoch("u", 9))
    assert fence.allows("saving")


def test_superseded_is_a_named_permanent_exit() -> None:
    reason, message, retryable = classify(Superseded("stopped before saving"))
    assert (reason, message, retryable) == (ExitReason.SUPERSEDED, "stopped before saving", False)
    assert ExitReason.from_exit_code(10) is ExitReason.SUPERSEDED


class Engine:
    """Writes a checkpoint's files as DeepSpeed does (minus tensors); `during_save` runs in the middle."""

    def __init__(self, during_save: Callable[[], Any] = lambda: None) -> None:
        self.during_save = during_save

    def save_checkpoint(self, path: str, tag: str, save_latest: bool) -> None:
        (Path(path) / tag).mkdir()
        (Path(path) / tag / "mp_rank_00_model_states.pt").write_bytes(b"w" * 64)
        self.during_save()


def checkpointer(folder: Path, attempt: int, keep: int = 1) -> Checkpointer:
    fence = Fence(folder, Epoch("u", attempt), RANK0)
    fence.claim()
    return Checkpointer(folder, keep, RANK0, fence=fence)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_superseded_checkpointer_stops_without_publishing_pruning_or_cleaning(tmp_path: Path) -> None:
    """Attempt 1 keeps running beside attempt 2 (its node cut off): its next save stops Superseded, and
    every file attempt 2 wrote is unchanged, by content."""
    old = checkpointer(tmp_path, 1)
    old.save(Engine(), 10, {}, None)
    new = checkpointer(tmp_path, 2)
    new.save(Engine(), 20, {}, None)  # keep 1: prunes step 10
    (tmp_path / f".partial-{step_name(30)}").mkdir()  # what attempt 2 is writing now
    before = contents(tmp_path)
    with pytest.raises(Superseded, match=f"before saving {step_name(40)}"):
        old.save(Engine(), 40, {}, None)
    with pytest.raises(Superseded):
        old.clean_partials()
    assert contents(tmp_path) == before and (tmp_path / f".partial-{step_name(30)}").is_dir()
    assert not (tmp_path / step_name(40)).exists()


def test_a_claim_landing_during_a_save_stops_it_before_anything_is_published(tmp_path: Path) -> None:
    """The newer attempt writes its epoch again while the older writes its shards (an interleaved claim had
    let the older through its first check): the check after the write stops the older before it touches
    the state file, the manifest, the published folder, `latest` or pruning."""
    newer = checkpointer(tmp_path, 2)
    newer.save(Engine(), 20, {}, None)
    kept = contents(tmp_path / step_name(20)) | {"latest": (tmp_path / "latest").read_bytes()}
    write_epoch(tmp_path, Epoch("u", 1))  # the older's late claim lands
    old = Checkpointer(tmp_path, 1, RANK0, fence=Fence(tmp_path, Epoch("u", 1), RANK0))
    newer_check = Fence(tmp_path, Epoch("u", 2), RANK0)
    with pytest.raises(Superseded, match=f"before writing .partial-{step_name(20)}"):
        old.save(Engine(during_save=lambda: newer_check.allows("a check of attempt 2")), 20, {}, None)
    assert contents(tmp_path / step_name(20)) | {"latest": (tmp_path / "latest").read_bytes()} == kept
    assert read_epoch(tmp_path) == Epoch("u", 2)


def test_the_other_ranks_check_only_after_the_first_of_their_node_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-created job's second rank must not meet the earlier job's epoch before its node's first rank took
    the folder over: it checks after the barrier (here: the moment local rank 0's claim lands)."""
    from kubetune.trainer import distributed

    write_epoch(tmp_path, Epoch("earlier-uid", 4))
    monkeypatch.setattr(distributed, "barrier", lambda: write_epoch(tmp_path, Epoch("new-uid", 1)))
    second = Fence(tmp_path, Epoch("new-uid", 1), Rank(1, 2, 1, "cpu"))
    second.claim()
    assert second.lost is None and read_epoch(tmp_path) == Epoch("new-uid", 1)
