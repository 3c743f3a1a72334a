"""Fencing between attempts: only the newest attempt of a job writes in its checkpoint folder.

A node cut off from the control plane may keep running its processes (a runtime hang, a partial
partition). The operator then starts the next attempt elsewhere, on the same ReadWriteMany folder, beside
the old gang; both would clean partial checkpoints, prune and export, deleting each other's files. So each
attempt holds an epoch, (job uid, attempt number), whose attempt only grows within a job. Before the gang
trains, the first process of every node writes it into the folder (`epoch.json`, atomically); from then on
a rank writes, prunes, cleans or exports only while the folder's epoch is its own. The epoch is a fencing
token checked where the write lands (the file lives in the folder the writes go to), read right before
and right after each write. A rank that meets a newer epoch stops at once, writes nothing more, and exits
Superseded (kubetune.api.outcome.ExitReason), which is never retried: the newer attempt is the one that runs.

| the folder holds                       | at the start (`claim`)  | before / after a write (`allows`) |
|----------------------------------------|-------------------------|-----------------------------------|
| this epoch                             | go on                   | go on                             |
| no epoch, or one that does not parse   | write ours              | write ours                        |
| an earlier attempt of this job         | write ours              | write ours (never go back)        |
| a later attempt of this job            | stop: Superseded        | stop: Superseded                  |
| another job's epoch                    | write ours (take over)  | stop: Superseded                  |

Why an earlier epoch met during a check is overwritten rather than obeyed: two claims can interleave (the
old gang read before the new one wrote, and wrote after it); the newer attempt writing its epoch again makes
the outcome the same in either order, and the older meets the newer at its next check. Another job's epoch
at the start means the job was re-created (a new uid) or handed the folder: whether it may use the folder
at all is decided before any pod starts (folder ownership); once it runs, the earlier job's ranks are the
ones fenced out.

Cost: one read of a file of about 150 bytes per check, a few per checkpoint on rank 0 and one or two on the
others. Limits, said plainly: a POSIX file system has no compare-and-swap, so between a check and the write
it guards (milliseconds) a newer attempt may claim the folder; and a network file system may answer from a
cached lookup for a while (NFS's attribute cache: up to `acdirmax`, 60 s by default). Both shrink the time a
stale gang can write from the rest of its run to about one write; its next check stops it. Ranks check at
each checkpoint and before the export, not at each step, so an old gang stops within one checkpoint interval.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from kubetune.trainer import distributed
from kubetune.trainer.errors import Superseded

log = logging.getLogger(__name__)

EPOCH_FILE = "epoch.json"
#: Bumped when the file's layout changes; a reader treats a format it does not know as no epoch.
EPOCH_FORMAT = 1
#: Rounds of write-then-read-back in one check before the rank gives up the folder: another round is needed
#: only when an older claim lands between our write and our read-back, which the older then sees and obeys.
CLAIM_ROUNDS = 3


@dataclass(frozen=True)
class Epoch:
    """One attempt of one job: what a rank proves it is current with."""

    job_uid: str
    attempt: int

    def __str__(self) -> str:
        return f"attempt {self.attempt} of job {self.job_uid}"


class Verdict(Enum):
    """What a rank does after reading the folder's epoch."""

    GO_ON = "go on"
    """The folder's epoch is this rank's own."""
    CLAIM = "claim"
    """The folder holds no epoch or an earlier one: write this rank's, read it back, go on."""
    STOP = "stop"
    """A newer attempt (or, after the start, another job) holds the folder: write nothing more."""


def decide(mine: Epoch, found: Epoch | None, starting: bool) -> Verdict:
    """The module's table: `found` is the folder's epoch (None: none readable); `starting`: the claim before
    the gang trains (another job's epoch is taken over then, and obeyed afterwards)."""
    if found == mine:
        return Verdict.GO_ON
    if found is None:
        return Verdict.CLAIM
    if found.job_uid != mine.job_uid:
        return Verdict.CLAIM if starting else Verdict.STOP
    return Verdict.CLAIM if found.attempt < mine.attempt else Verdict.STOP


def epoch_of(job_uid: str | None, attempt: int | None) -> Epoch | None:
    """The epoch of a supervised rank; None when run by hand (no uid or no attempt): nothing is fenced."""
    return Epoch(job_uid, attempt) if job_uid and attempt is not None else None


def encode(epoch: Epoch, holder: str, now: float) -> str:
    """The file's text: the epoch, and who wrote it when (for people; readers compare the epoch only)."""
    body = {"format": EPOCH_FORMAT, "jobUid": epoch.job_uid, "attempt": epoch.attempt, "holder": holder, "at": now}
    return json.dumps(body, indent=1) + "\n"


def parse(text: str) -> Epoch | None:
    """The epoch in a file's text; None when it is not an epoch file this version reads."""
    try:
        body: Any = json.loads(text)
        if not isinstance(body, dict) or body.get("format") != EPOCH_FORMAT:
            return None
        uid, attempt = body["jobUid"], body["attempt"]
    except (ValueError, KeyError):
        return None
    if not isinstance(uid, str) or not uid or not isinstance(attempt, int) or isinstance(attempt, bool):
        return None
    return Epoch(uid, attempt)


def read_epoch(folder: Path) -> Epoch | None:
    """The folder's epoch (one small read); None when there is none or it does not parse. Other OSErrors
    pass through: an unreadable volume proves nothing about who holds it."""
    try:
        return parse((folder / EPOCH_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
        return None


def write_epoch(folder: Path, epoch: Epoch) -> None:
    """Write the epoch atomically: a temporary file of this process's own (several nodes may claim at once),
    flushed to the disk, renamed over `epoch.json`, and the folder's entry flushed too."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = f"{socket.gethostname()}/{os.getpid()}"
    temporary = folder / f".{EPOCH_FILE}.{socket.gethostname()}.{os.getpid()}.tmp"
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(encode(epoch, holder, time.time()))
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(folder / EPOCH_FILE)
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened and flushed
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def superseded_message(folder: Path, mine: Epoch, found: Epoch | None, what: str) -> str:
    holder = str(found) if found is not None else "another writer"
    return (
        f"stopped before {what}: the checkpoint folder {folder} is held by {holder}, this rank is {mine}; a newer "
        "attempt runs, so this one writes nothing more there"
    )


@dataclass
class Fence:
    """One rank's hold on its checkpoint folder. `epoch` None: a rank run by hand, nothing is fenced (the
    collective steps still act as barriers, so the callers' order is the same either way)."""

    folder: Path
    epoch: Epoch | None
    rank: distributed.Rank
    lost: str | None = None
    """Why this rank no longer holds the folder (the Superseded message); sticky."""

    def claim(self) -> None:
        """Before the gang trains: the first process of every node writes the epoch into its view of the
        folder (a node-local volume has its own), then every rank checks it, and all stop if any must."""
        if self.epoch is not None and self.rank.local_rank == 0:
            self._settle("the gang starts", starting=True)
            if self.lost is None:
                log.info("checkpoint folder %s: held by %s", self.folder, self.epoch)
        # The others check only once the claims are written: before, a re-created job's rank would meet the
        # earlier job's epoch, which only a claim takes over.
        distributed.barrier()
        self.agree("the gang starts")

    def allows(self, what: str) -> bool:
        """This rank's check right before (or after) a write: whether the folder's epoch is its own. One small
        read; once lost, always lost."""
        if self.epoch is not None and self.lost is None:
            self._settle(what, starting=False)
        return self.lost is None

    def agree(self, what: str) -> None:
        """Every rank checks, then they compare (one small all-gather, which also serves as a barrier):
        every rank raises Superseded when any one no longer holds the folder."""
        self.allows(what)
        reasons: list[str | None] = distributed.all_gather_objects(self.lost)
        if (reason := next((r for r in reasons if r), None)) is not None:
            raise Superseded(reason)

    @contextlib.contextmanager
    def translating(self, what: str) -> Iterator[None]:
        """Inside: an error met while the folder is no longer ours (a newer attempt removed the partial
        checkpoint being written, or a peer stopped Superseded and the collective broke) is Superseded."""
        try:
            yield
        except Superseded:
            raise
        except Exception as error:
            if self.allows(what):
                raise
            raise Superseded(self.lost or what) from error

    def _settle(self, what: str, starting: bool) -> None:
        assert self.epoch is not None
        for _ in range(CLAIM_ROUNDS):
            found = read_epoch(self.folder)
            verdict = decide(self.epoch, found, starting)
            if verdict is Verdict.GO_ON:
                return
            if verdict is Verdict.STOP:
                self.lost = superseded_message(self.folder, self.epoch, found, what)
                log.error("%s", self.lost)
                return
            if found is not None:
                log.warning("checkpoint folder %s: %s takes it over from %s", self.folder, self.epoch, found)
            write_epoch(self.folder, self.epoch)
            starting = False  # read back: anyone else's epoch now is newer than this claim
        self.lost = f"stopped before {what}: the claim on {self.folder} kept being overwritten ({CLAIM_ROUNDS} tries)"
        log.error("%s", self.lost)
