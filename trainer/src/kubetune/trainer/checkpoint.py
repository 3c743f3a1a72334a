"""Checkpoints that survive any crash: published atomically, verified on load, never silently ignored.

Layout of the checkpoint directory:

    step-00000040/            one complete checkpoint
      ds/                     DeepSpeed's files (module, optimizer shards, LR scheduler), per rank
      rng-rank<R>.pt          each rank's random-number-generator state
      trainer_state.json      step, data position, early-stopping state, evaluations (and every file's
                              size, which trainers from before manifests check)
      manifest.json           written last: every file's size and SHA-256 (kubetune.trainer.integrity)
    latest                    name of the newest published checkpoint (for people and tools)
    best                      name of the checkpoint with the best evaluation
    .partial-step-00000044/   a checkpoint being written (deleted on the next start)

A save writes everything into `.partial-step-N` on all ranks; rank 0 writes trainer_state.json; each rank
hashes its share of the files; rank 0 writes the manifest (atomically), renames the folder to `step-N`
and replaces `latest` (rename is atomic on POSIX file systems).

Every write, removal and rename here happens only while the folder's epoch (`epoch.json`) is this
attempt's: checked before and after, and all ranks stop Superseded together when a newer attempt holds the
folder (kubetune.trainer.fencing).

On start, kubetune.trainer.resume picks the checkpoint to continue from: the newest whose manifest
verifies and that loads on every rank; damaged ones are skipped and named, and an error that proves no
damage (I/O, memory, a lost peer) fails the attempt as retryable rather than fall back.

Pruning (`retained`) keeps the newest `checkpointing.keep` checkpoints that were not passed over on
resume, the best one, and the one this attempt resumed from (the only one proven to load) for the whole
attempt. A checkpoint passed over never takes a place in `keep`, so it never pushes a good one out; while
it is newer than every kept checkpoint it stays (the run replaces it when it saves that step again),
once older it is pruned like any other.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.trainer import distributed
from kubetune.trainer.errors import ConfigError, proves_nothing
from kubetune.trainer.fencing import Fence
from kubetune.trainer.integrity import (
    MANIFEST_FILE,
    MANIFEST_KEY,
    STATE_FILE,
    FileRecord,
    describe,
    describe_visible,
    file_sizes,
    listing,
    share,
    write,
    write_text_atomically,
)
from kubetune.trainer.resume import Resumed, resume_newest

log = logging.getLogger(__name__)

DEEPSPEED_TAG = "ds"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def published(directory: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every published checkpoint folder, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def retained(
    steps: list[int],
    keep: int,
    best: int | None,
    resumed_from: int | None = None,
    passed_over: frozenset[int] = frozenset(),
) -> set[int]:
    """Steps to keep: the newest `keep` of those not `passed_over` on resume, the best, the one resumed
    from, and any passed over that is newer than all of those kept (see the module docstring)."""
    usable = sorted((step for step in steps if step not in passed_over), reverse=True)
    kept = set(usable[:keep]) | {step for step in (best, resumed_from) if step is not None}
    newest_kept = usable[0] if usable else None
    kept |= {step for step in passed_over if newest_kept is None or step > newest_kept}
    return kept & set(steps)


def rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpointer:
    """Saves and restores one run's checkpoints. Every method is called on every rank."""

    directory: Path
    keep: int
    rank: distributed.Rank
    resumed_from: int | None = None
    """The step this attempt resumed from: kept for the whole attempt."""
    passed_over: set[int] = field(default_factory=set)
    """Steps skipped on resume and not saved again since: they never count toward `keep`."""
    fence: Fence | None = None
    """The attempt's hold on `directory` (kubetune.trainer.fencing); None: not fenced (a rank run by hand)."""

    def __post_init__(self) -> None:
        if self.fence is None:
            self.fence = Fence(self.directory, None, self.rank)

    @property
    def _fence(self) -> Fence:
        assert self.fence is not None  # set in __post_init__
        return self.fence

    def clean_partials(self) -> None:
        """Remove half-written checkpoints of an earlier, killed attempt, then wait for every rank.

        The first process of every node cleans, not only rank 0: a node whose checkpoint folder is not the
        one rank 0 sees (a node-local volume) would otherwise keep its half-written shards forever. On a
        shared volume the nodes remove the same folders; removal tolerates a folder already gone."""
        if self.rank.local_rank == 0 and self.directory.is_dir():
            for stale in self.directory.glob(".partial-step-*"):
                if not self._fence.allows(f"removing {stale.name}"):
                    break
                log.warning("removing an incomplete checkpoint from an earlier attempt: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self._fence.agree("cleaning incomplete checkpoints")

    def save(self, engine: Any, step: int, sidecar: dict[str, Any], best_step: int | None) -> Path:
        """Write and publish the checkpoint of `step`; returns its folder."""
        import torch

        partial = self.directory / f".partial-{step_name(step)}"
        final = self.directory / step_name(step)
        fence = self._fence
        fence.agree(f"saving {final.name}")
        with fence.translating(f"saving {final.name}"):
            if self.rank.is_main:
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
            distributed.barrier()
            engine.save_checkpoint(str(partial), tag=DEEPSPEED_TAG, save_latest=False)
            torch.save(rng_state(), partial / f"rng-rank{self.rank.rank}.pt")
            fence.agree(f"writing {partial.name}")  # each rank checks after its own writes
            if self.rank.is_main and fence.allows(f"writing {STATE_FILE} of {final.name}"):
                state = {**sidecar, "step": step, "world": self.rank.world, "files": file_sizes(partial)}
                write_text_atomically(
                    partial / STATE_FILE, json.dumps({**state, MANIFEST_KEY: MANIFEST_FILE}, indent=2) + "\n"
                )
            records = self._describe(partial)
            if self.rank.is_main:
                self._publish(partial, final, records, best_step, step)
            self.passed_over.discard(step)  # replaced by the checkpoint just saved
            fence.agree(f"publishing {final.name}")  # rank 0 stopped at its first failed check, if any
        return final

    def _publish(
        self, partial: Path, final: Path, records: dict[str, FileRecord], best_step: int | None, step: int
    ) -> None:
        """Rank 0: the manifest, the rename into place, the pointers and pruning, each only while the folder
        is still this attempt's (the first failed check ends it; `save` then stops every rank)."""
        fence = self._fence
        if not fence.allows(f"writing the manifest of {final.name}"):
            return
        write(partial, records)
        if final.exists():
            if not fence.allows(f"replacing {final.name}"):
                return
            shutil.rmtree(final)
        if not fence.allows(f"renaming {partial.name} into place"):
            return
        partial.rename(final)
        if not fence.allows(f"updating latest after {final.name}"):
            return
        write_text_atomically(self.directory / "latest", final.name + "\n")
        if best_step is not None and best_step == step:
            write_text_atomically(self.directory / "best", final.name + "\n")
        self._prune(best_step, saved=step)

    def _describe(self, partial: Path) -> dict[str, FileRecord]:
        """Every file's size and SHA-256, each rank hashing its share; whole on rank 0 only. Rank 0 lists the
        folder for everyone, and hashes itself what another rank does not see: that rank's folder may not be
        rank 0's (each pod's own emptyDir when `storage.checkpoints` is unset), or its view of a network
        file system may lag behind (cached lookups)."""
        names: list[str] = distributed.broadcast_from_main(listing(partial) if self.rank.is_main else None)
        mine = describe_visible(partial, share(names, self.rank.rank, self.rank.world))
        records: dict[str, FileRecord] = {}
        unseen: list[str] = []
        for part, missing in distributed.all_gather_objects(mine):
            records.update(part)
            unseen += missing
        return {**records, **describe(partial, unseen)} if self.rank.is_main else records

    def _prune(self, best_step: int | None, saved: int) -> None:
        steps = [step for step, _ in published(self.directory)]
        passed_over = frozenset(self.passed_over - {saved})
        keep = retained(steps, self.keep, best_step, self.resumed_from, passed_over)
        for step, folder in published(self.directory):
            if step not in keep:
                if not self._fence.allows(f"pruning {folder.name}"):
                    return
                shutil.rmtree(folder, ignore_errors=True)

    def resume(self, engine: Any) -> Resumed | None:
        """Load the newest usable checkpoint on every rank (kubetune.trainer.resume); None when there is
        none at all. ConfigError when checkpoints exist but every one is proven unusable."""
        resumed = resume_newest(self.directory, published(self.directory), self.rank, lambda f: self._load(engine, f))
        if resumed is not None:
            self.resumed_from = resumed.step
            self.passed_over = {skipped.step for skipped in resumed.skipped}
            if resumed.note:
                log.warning("%s", resumed.note)
        return resumed

    def _load(self, engine: Any, folder: Path) -> str | None:
        """Load `folder` into the engine and this rank's RNG state; the problem, or None on success. An
        error that proves nothing about the files (kubetune.trainer.errors.proves_nothing) is raised."""
        import torch

        try:
            path, _ = engine.load_checkpoint(
                str(folder), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            rng_file = folder / f"rng-rank{self.rank.rank}.pt"
            if path is not None and rng_file.exists():
                restore_rng(torch.load(rng_file, weights_only=False))
        except Exception as error:
            if proves_nothing(error):
                raise
            return f"it does not load: {type(error).__name__}: {str(error)[:300]}"
        return None if path is not None else "DeepSpeed found no checkpoint in it"

    def load_weights(self, engine: Any, folder: Path, zero_stage: int) -> None:
        """Load the module weights of `folder` (the best checkpoint, before export). Under ZeRO-3 the module
        file holds only placeholders, and DeepSpeed's module-only path for stage 3 consolidates through a
        `latest` file that these checkpoints do not write: the weights are restored from the fp32
        partitions instead, loaded with the optimizer states (the run is over: nothing reads those after)."""
        sharded = zero_stage == 3
        path, _ = engine.load_checkpoint(
            str(folder),
            tag=DEEPSPEED_TAG,
            load_module_only=not sharded,
            load_optimizer_states=sharded,
            load_lr_scheduler_states=False,
        )
        if path is None:
            raise ConfigError(f"the best checkpoint {folder} could not be loaded for export")
