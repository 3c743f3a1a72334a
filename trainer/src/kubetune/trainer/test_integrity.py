"""Checkpoint manifests and what examining a folder proves — on folders written by hand, no DeepSpeed."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from kubetune.trainer import integrity
from kubetune.trainer.integrity import (
    MANIFEST_FILE,
    MANIFEST_KEY,
    STATE_FILE,
    Trust,
    describe,
    describe_visible,
    examine,
    file_sizes,
    listing,
    share,
)

pytestmark = pytest.mark.timeout(30)

WEIGHTS = "ds/mp_rank_00_model_states.pt"


def write_checkpoint(folder: Path, *, manifest: bool = True) -> Path:
    """A checkpoint as the trainer writes it; `manifest=False`: as a trainer from before manifests did."""
    (folder / "ds").mkdir(parents=True)
    (folder / WEIGHTS).write_bytes(b"w" * 100)
    (folder / "rng-rank0.pt").write_bytes(b"r" * 10)
    state = {"step": 4, "files": file_sizes(folder)} | ({MANIFEST_KEY: MANIFEST_FILE} if manifest else {})
    (folder / STATE_FILE).write_text(json.dumps(state))
    if manifest:
        integrity.write(folder, describe(folder, listing(folder)))
    return folder


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_manifest_lists_every_other_file_with_its_size_and_sha256(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "step")
    body = json.loads((folder / MANIFEST_FILE).read_text())
    assert (body["format"], body["algorithm"]) == (1, "sha256")
    assert sorted(body["files"]) == [WEIGHTS, "rng-rank0.pt", STATE_FILE]
    assert body["files"][WEIGHTS] == {"size": 100, "sha256": hashlib.sha256(b"w" * 100).hexdigest()}
    assert not list(folder.glob(".*.tmp")), "the temporary file of the atomic write was left behind"
    assert examine(folder) == integrity.Examined(Trust.VERIFIED)


def damage(folder: Path, how: str) -> None:
    """Damage a checkpoint the way storage and crashes do."""
    if how == "same-size":
        flip_a_byte(folder / WEIGHTS)
    elif how == "truncated":
        (folder / WEIGHTS).write_bytes(b"w" * 50)
    elif how == "file missing":
        (folder / "rng-rank0.pt").unlink()
    elif how == "manifest missing":
        (folder / MANIFEST_FILE).unlink()
    elif how == "manifest garbled":
        (folder / MANIFEST_FILE).write_text('{"format": 1, "algorithm": "sha256", "files": ')
    elif how == "manifest of an unknown format":
        (folder / MANIFEST_FILE).write_text('{"format": 2, "algorithm": "blake3", "files": {}}')
    elif how == "state damaged":
        flip_a_byte(folder / STATE_FILE)
    elif how == "everything but the weights missing":
        for name in (MANIFEST_FILE, STATE_FILE):
            (folder / name).unlink()


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("same-size", f"{WEIGHTS} does not match its SHA-256 in {MANIFEST_FILE}"),
        ("truncated", f"{WEIGHTS} has 50 bytes, 100 were written"),
        ("file missing", "rng-rank0.pt is missing"),
        ("manifest missing", f"{MANIFEST_FILE} is missing"),
        ("manifest garbled", f"{MANIFEST_FILE} is unreadable"),
        ("manifest of an unknown format", "has format 2, 'blake3'"),
        ("state damaged", f"{STATE_FILE} does not match its SHA-256"),
        ("everything but the weights missing", f"{MANIFEST_FILE} and {STATE_FILE} are missing"),
    ],
)
def test_damage_is_found_and_named(tmp_path: Path, how: str, reason: str) -> None:
    folder = write_checkpoint(tmp_path / "step")
    damage(folder, how)
    examined = examine(folder)
    assert examined.trust is Trust.DAMAGED
    assert reason in examined.reason


def test_a_checkpoint_from_before_manifests_is_legacy_when_its_sizes_match(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "legacy", manifest=False)
    assert examine(folder).trust is Trust.LEGACY
    flip_a_byte(folder / WEIGHTS)  # no checksum to catch this: the reason legacy ones come last
    assert examine(folder).trust is Trust.LEGACY
    (folder / WEIGHTS).write_bytes(b"w")
    assert examine(folder) == integrity.Examined(Trust.DAMAGED, f"{WEIGHTS} has 1 bytes, 100 were written")


def test_each_rank_hashes_its_share_and_the_shares_cover_every_file(tmp_path: Path) -> None:
    names = [f"f{i}" for i in range(7)]
    shares = [share(names, rank, 3) for rank in range(3)]
    assert sorted(name for part in shares for name in part) == names and all(len(s) in (2, 3) for s in shares)
    folder = write_checkpoint(tmp_path / "step")
    flip_a_byte(folder / WEIGHTS)
    names = sorted(json.loads((folder / MANIFEST_FILE).read_text())["files"])
    hasher = next(rank for rank in range(2) if WEIGHTS in share(names, rank, 2))
    assert examine(folder, hasher, 2).trust is Trust.DAMAGED
    assert examine(folder, 1 - hasher, 2).trust is Trust.VERIFIED, "the other rank hashes other files"


def test_an_io_error_proves_nothing_and_passes_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_checkpoint(tmp_path / "step")

    def unreadable(path: Path) -> str:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(integrity, "sha256_of", unreadable)
    with pytest.raises(OSError, match="Input/output error"):
        examine(folder)


def test_files_a_rank_does_not_see_are_left_to_rank_zero(tmp_path: Path) -> None:
    """A rank whose folder is its own pod's emptyDir sees none of rank 0's files."""
    folder = write_checkpoint(tmp_path / "step")
    records, unseen = describe_visible(folder, [WEIGHTS, "rng-rank1.pt"])
    assert (list(records), unseen) == ([WEIGHTS], ["rng-rank1.pt"])
