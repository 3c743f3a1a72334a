"""Whether a checkpoint folder is what its writer wrote: the manifest, written last, and the check of it.

Each checkpoint's manifest lists every file in it with its size and SHA-256. Sizes alone catch a
truncated file, not a damaged one of the right size: blocks a crash left zero-filled (the size was
recorded, the data never left the page cache), a torn write on a network file system, bit rot. A
checkpoint is trusted on resume only when every file is there with its size and checksum.

Why SHA-256, not a cheaper checksum: measured here (Python 3.11, a CPU with the SHA extensions) SHA-256
hashes about 1.3 GB/s per core and zlib's CRC-32 about 2 GB/s; both are of the order of what a checkpoint
volume reads, so the cheaper one would save little, while SHA-256 is what `sha256sum` checks by hand and
what the Hugging Face hub records for weights, with no new dependency. The cost is split: each rank
hashes every world-th file (`share`), streaming in `CHUNK_BYTES` pieces, so a shard of many GB never sits
in memory and a checkpoint of N bytes costs each rank about N / world of reading. Files just saved are
usually still in the page cache, so the save-time hashing mostly reads memory, not the volume.

The manifest is written after everything else in the folder (trainer_state.json included, whose checksum
it records), to a temporary name, flushed and renamed; the folder is published (renamed to `step-N`)
only after that. So a published checkpoint of this version without a manifest is damaged. One written
before manifests existed has a trainer_state.json that names no manifest: it is a legacy checkpoint,
checked by the sizes that file records (`examine` says which of the three a folder is).

`examine` returns a verdict for what it proves (a file missing, a size or checksum that differs, a
manifest that is not one); any other OSError (EIO, ESTALE, a permission) passes through, since it proves
nothing about the files: the caller retries rather than discards the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
STATE_FILE = "trainer_state.json"
#: trainer_state.json's key naming the manifest: present in every checkpoint written with one.
MANIFEST_KEY = "manifest"
#: Bumped when the manifest's layout changes; a reader refuses a format it does not know.
MANIFEST_FORMAT = 1
ALGORITHM = "sha256"
#: Read size when hashing: large enough for full-speed sequential reads, small beside any shard.
CHUNK_BYTES = 8 * 1024 * 1024
_TEMPORARY_SUFFIX = ".tmp"


class ManifestError(ValueError):
    """The manifest exists but cannot be read as one: the checkpoint cannot be trusted."""


@dataclass(frozen=True)
class FileRecord:
    """What the manifest says of one file."""

    size: int
    """Bytes."""
    sha256: str
    """Hex digest of the whole file."""


def sha256_of(path: Path) -> str:
    """The file's SHA-256, read in `CHUNK_BYTES` pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def listing(folder: Path) -> list[str]:
    """Every file under `folder` (relative POSIX paths, sorted) but the manifest and temporary files."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE and not path.name.endswith(_TEMPORARY_SUFFIX)
    )


def share(names: list[str], rank: int, world: int) -> list[str]:
    """The files one rank hashes: every world-th of the sorted list, so the ranks split the reading."""
    return sorted(names)[rank::world]


def describe(folder: Path, names: list[str]) -> dict[str, FileRecord]:
    """Size and SHA-256 of each of `names` (relative to `folder`)."""
    return {name: FileRecord((folder / name).stat().st_size, sha256_of(folder / name)) for name in names}


def describe_visible(folder: Path, names: list[str]) -> tuple[dict[str, FileRecord], list[str]]:
    """`describe` of those of `names` this process sees, and the names it does not see: a rank whose
    checkpoint folder is not rank 0's (each pod's own emptyDir) or whose view lags (a network file
    system's cached lookups) leaves them to rank 0, which listed them."""
    records: dict[str, FileRecord] = {}
    unseen: list[str] = []
    for name in names:
        try:
            records.update(describe(folder, [name]))
        except (FileNotFoundError, NotADirectoryError):
            unseen.append(name)
    return records, unseen


def write(folder: Path, records: dict[str, FileRecord]) -> None:
    """Write the manifest atomically: a temporary file, flushed to the disk, renamed into place."""
    body = {
        "format": MANIFEST_FORMAT,
        "algorithm": ALGORITHM,
        "files": {name: {"size": r.size, "sha256": r.sha256} for name, r in sorted(records.items())},
    }
    write_text_atomically(folder / MANIFEST_FILE, json.dumps(body, indent=1) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """`text` at `path` whole or not at all: written beside it, flushed, renamed over it."""
    partial = path.with_name(f".{path.name}{_TEMPORARY_SUFFIX}")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def read(folder: Path) -> dict[str, FileRecord] | None:
    """The manifest's records; None when there is no manifest. ManifestError when it is not a manifest
    this version reads; other OSErrors (an I/O error) pass through: they prove nothing about the folder."""
    try:
        text = (folder / MANIFEST_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        body: dict[str, Any] = json.loads(text)
        if body.get("format") != MANIFEST_FORMAT or body.get("algorithm") != ALGORITHM:
            raise ManifestError(f"{MANIFEST_FILE} has format {body.get('format')!r}, {body.get('algorithm')!r}")
        return {name: FileRecord(int(r["size"]), str(r["sha256"])) for name, r in body["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ManifestError(f"{MANIFEST_FILE} is unreadable ({error})") from error


def mismatch(folder: Path, records: dict[str, FileRecord], hashed: list[str]) -> str | None:
    """Why `folder` differs from `records`, or None: every file must exist with its size, and those in
    `hashed` (this rank's share) with their checksum. A missing file is damage; any other OSError passes
    through."""
    if not records:
        return f"{MANIFEST_FILE} lists no files"
    for name, record in records.items():
        try:
            size = (folder / name).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return f"{name} is missing"
        if size != record.size:
            return f"{name} has {size} bytes, {record.size} were written"
    for name in hashed:
        if name in records and sha256_of(folder / name) != records[name].sha256:
            return f"{name} does not match its SHA-256 in {MANIFEST_FILE}"
    return None


def file_sizes(folder: Path) -> dict[str, int]:
    """Size in bytes of every file under `folder` (relative POSIX paths), the state file and the manifest
    excluded: what trainer_state.json records, so that a trainer from before manifests can still check a
    checkpoint written by this one."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in (STATE_FILE, MANIFEST_FILE)
    }


def read_state(folder: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    return state


class Trust(Enum):
    """What examining a checkpoint folder proved."""

    VERIFIED = "verified"
    """Its manifest lists every file with the size and checksum found."""
    LEGACY = "legacy"
    """Written before manifests: the sizes trainer_state.json records match, no checksum to compare."""
    DAMAGED = "damaged"
    """A file is missing or differs, or the manifest or state file is not readable as one."""


@dataclass(frozen=True)
class Examined:
    trust: Trust
    reason: str = ""
    """Why it is damaged (or legacy), naming the file."""


def examine(folder: Path, rank: int = 0, world: int = 1) -> Examined:
    """Whether `folder` is as its writer wrote it; this rank hashes its `share` of the files (the others'
    verdicts are combined by the caller). OSErrors other than a missing file pass through."""
    try:
        records = read(folder)
    except ManifestError as error:
        return Examined(Trust.DAMAGED, str(error))
    if records is None:
        return _examine_legacy(folder)
    why = mismatch(folder, records, share(list(records), rank, world))
    return Examined(Trust.DAMAGED, why) if why else Examined(Trust.VERIFIED)


def _examine_legacy(folder: Path) -> Examined:
    """A folder without a manifest: damaged, unless its state file predates manifests and its sizes match."""
    try:
        state = read_state(folder)
    except FileNotFoundError:
        return Examined(Trust.DAMAGED, f"{MANIFEST_FILE} and {STATE_FILE} are missing")
    except ValueError as error:
        return Examined(Trust.DAMAGED, f"{STATE_FILE} is unreadable ({error})")
    if MANIFEST_KEY in state:
        return Examined(Trust.DAMAGED, f"{MANIFEST_FILE} is missing")
    expected: dict[str, int] = state.get("files") or {}
    if not expected:
        return Examined(Trust.DAMAGED, f"{STATE_FILE} lists no files")
    records = {name: FileRecord(size, "") for name, size in expected.items()}
    why = mismatch(folder, records, hashed=[])
    if why:
        return Examined(Trust.DAMAGED, why)
    return Examined(Trust.LEGACY, f"written before checkpoints had a {MANIFEST_FILE}: sizes checked, no checksums")
