"""Which checkpoint a restarted attempt continues from, and what an error on the way means.

Every rank runs `resume` over the same published checkpoints, newest first; after each examination and
each load the ranks agree through one small all-reduce, so they all continue from the same checkpoint or
all stop the same way. A checkpoint verified by its manifest (kubetune.trainer.integrity) is loaded as
soon as it is reached. A legacy one (written before manifests: sizes checked, no checksums) is tried only
once every verified one failed: it cannot prove it is whole, and a verified checkpoint can.

| what a rank meets                                             | proves            | then                          |
|---------------------------------------------------------------|-------------------|-------------------------------|
| a file missing, a size or SHA-256 that differs, the manifest  | damage            | skipped, named (log, result); |
| missing (this version's checkpoint) or not readable as one    |                   | the previous one is tried     |
| DeepSpeed raises anything else while loading (an unpickling   | it does not load  | skipped, named                |
| error, a shape that does not fit)                             |                   |                               |
| another OSError (EIO, ESTALE, EACCES)                         | nothing           | CheckpointUnreadable, retried |
| MemoryError, out of (GPU) memory                              | nothing           | OutOfMemory, retried          |
| a gloo/NCCL error, a lost peer                                | nothing           | PeerLost, retried             |
| every checkpoint skipped                                      |                   | InvalidConfig (permanent)     |

An error that proves nothing does not fall back to an older checkpoint: that would throw away the steps
since it, for a volume that may answer in a minute. The attempt fails as retryable instead, and the next
one reads the same checkpoint again (bounded by `retryPolicy.maxRestarts`). Only when every checkpoint is
proven unusable does the job fail for good, naming each one and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubetune.trainer import distributed
from kubetune.trainer.errors import (
    CheckpointUnreadable,
    ConfigError,
    PeerFailedToResume,
    is_peer_lost,
    proves_nothing,
)
from kubetune.trainer.integrity import Examined, Trust, examine, read_state

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: A rank's loader: loads `folder` into the engine; the proven problem, or None once loaded.
Loader = Callable[[Path], str | None]


@dataclass(frozen=True)
class Skipped:
    """A checkpoint passed over on resume, and why."""

    step: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


@dataclass(frozen=True)
class Resumed:
    """The checkpoint an attempt continues from."""

    step: int
    folder: Path
    state: dict[str, Any]
    """Its trainer_state.json."""
    trust: Trust
    skipped: tuple[Skipped, ...] = ()
    """Newer checkpoints passed over, newest first."""

    @property
    def note(self) -> str | None:
        """One sentence for the log and the result when anything was skipped or the checkpoint is legacy."""
        parts = []
        if self.skipped:
            parts.append(f"skipped {'; '.join(str(s) for s in self.skipped)}")
        if self.trust is Trust.LEGACY:
            parts.append("it has no manifest (written by an older kubetune): its files were checked by size only")
        return f"resumed from {self.folder.name}: {', and '.join(parts)}" if parts else None


def resume_newest(
    directory: Path, candidates: list[tuple[int, Path]], rank: distributed.Rank, load: Loader
) -> Resumed | None:
    """The checkpoint loaded into the engine (every rank the same), or None when `candidates` is empty.
    ConfigError when every candidate is proven unusable; a retryable error when a rank met an error that
    proves nothing (see the module's table). `candidates`: (step, folder), newest first."""
    search = _Search(rank, load)
    deferred: list[tuple[int, Path]] = []
    for step, folder in candidates:
        examined = search.examine(folder)
        if examined.trust is Trust.DAMAGED:
            search.skip(step, folder, examined.reason)
        elif examined.trust is Trust.LEGACY:
            log.info("checkpoint %s has no manifest (older kubetune): tried after every verified one", folder.name)
            deferred.append((step, folder))
        elif (resumed := search.load(step, folder, Trust.VERIFIED, passed_over=deferred)) is not None:
            return resumed
    for step, folder in deferred:
        if (resumed := search.load(step, folder, Trust.LEGACY)) is not None:
            return resumed
    if candidates:
        raise ConfigError(
            f"checkpoints exist in {directory} but none can be used: {'; '.join(map(str, search.skipped))}; "
            "move them away to start from scratch"
        )
    return None


@dataclass
class _Search:
    """One rank's walk through the candidates, agreeing with the others after each examination and load."""

    rank: distributed.Rank
    loader: Loader
    skipped: list[Skipped] = field(default_factory=list)

    def examine(self, folder: Path) -> Examined:
        """The gang's verdict on `folder`: damaged if any rank found damage in its share of the files (the
        first such rank's reason), legacy if any rank found no manifest."""
        examined, error = _guarded(lambda: examine(folder, self.rank.rank, self.rank.world))
        trust = examined.trust if examined is not None else None
        problem = examined.reason if examined is not None and trust is Trust.DAMAGED else None
        findings = self._agree(_Finding(problem, trust is Trust.LEGACY, error is not None), error, folder)
        if (reason := _first_problem(findings)) is not None:
            return Examined(Trust.DAMAGED, reason)
        return Examined(Trust.LEGACY) if any(f.legacy for f in findings) else Examined(Trust.VERIFIED)

    def load(
        self, step: int, folder: Path, trust: Trust, passed_over: list[tuple[int, Path]] | None = None
    ) -> Resumed | None:
        """`folder` loaded on every rank, or None (skipped, named) when any rank proved it unusable."""
        loaded, error = _guarded(lambda: (self.loader(folder), read_state(folder)))
        problem = loaded[0] if loaded is not None else None
        findings = self._agree(_Finding(problem, False, error is not None), error, folder)
        if (reason := _first_problem(findings)) is not None or loaded is None:
            self.skip(step, folder, reason or "not loadable")
            return None
        passed = [Skipped(s, f.name, _LEGACY_PASSED_OVER) for s, f in passed_over or []]
        return Resumed(step, folder, loaded[1], trust, (*self.skipped, *passed))

    def _agree(self, mine: _Finding, error: BaseException | None, folder: Path) -> list[_Finding]:
        """Every rank's finding (one small all-gather); every rank raises when any met an error that proves
        nothing about the checkpoint."""
        findings: list[_Finding] = distributed.all_gather_objects(mine)
        if any(f.retryable_error for f in findings):
            raise _retryable(error, folder)
        return findings

    def skip(self, step: int, folder: Path, reason: str) -> None:
        log.warning("checkpoint %s is unusable (%s); trying the previous one", folder.name, reason)
        self.skipped.append(Skipped(step, folder.name, reason))


#: Why a legacy checkpoint newer than the one resumed from was not used.
_LEGACY_PASSED_OVER = "no manifest (older kubetune): a verified checkpoint is preferred"


@dataclass(frozen=True)
class _Finding:
    """What one rank found in one examination or load (it travels to every rank, pickled)."""

    problem: str | None
    """The proven reason the checkpoint cannot be used, naming the file."""
    legacy: bool
    retryable_error: bool
    """An error that proves nothing about the checkpoint (I/O, memory)."""


def _first_problem(findings: list[_Finding]) -> str | None:
    return next((f.problem for f in findings if f.problem), None)


def _guarded(action: Callable[[], _T]) -> tuple[_T | None, BaseException | None]:
    """(the action's result, None), or (None, the error) for an error that proves nothing about the
    checkpoint. A lost peer is raised at once: the collective that would agree on it cannot run."""
    try:
        return action(), None
    except Exception as error:
        if is_peer_lost(error) or not proves_nothing(error):
            raise
        log.error("reading a checkpoint failed: %s: %s (this proves no damage)", type(error).__name__, error)
        return None, error


def _retryable(error: BaseException | None, folder: Path) -> BaseException:
    """What a rank stops with when some rank met an error that proves nothing: its own, or an echo."""
    if error is None:
        return PeerFailedToResume(
            f"another rank could not read checkpoint {folder.name} (an error that proves no damage; its log "
            "says which): the next attempt reads it again"
        )
    if isinstance(error, OSError):
        unreadable = CheckpointUnreadable(
            f"reading checkpoint {folder} failed: {type(error).__name__}: {error}; an I/O error proves no "
            "damage, so the next attempt reads it again rather than fall back to an older checkpoint"
        )
        unreadable.__cause__ = error
        return unreadable
    return error  # out of memory: kubetune.trainer.errors.classify names it and its remedy
