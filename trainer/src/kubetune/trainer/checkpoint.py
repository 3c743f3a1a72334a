"""Checkpoints that survive any crash: published atomically, verified on load, never silently ignored.

Layout of the checkpoint directory:

    step-00000040/            one complete checkpoint
      ds/                     DeepSpeed's files (module, optimizer shards, LR scheduler), per rank
      rng-rank<R>.pt          each rank's random-number-generator state
      trainer_state.json      written last: step, data position, early-stopping state, evaluations,
                              and the size of every file above (a truncated file is detected)
    latest                    name of the newest published checkpoint (for people and tools)
    best                      name of the checkpoint with the best evaluation
    .partial-step-00000044/   a checkpoint being written (deleted on the next start)

A save writes everything into `.partial-step-N` on all ranks, then rank 0 writes trainer_state.json,
renames the folder to `step-N` and replaces `latest` (rename is atomic on POSIX file systems). Older
checkpoints beyond `checkpointing.keep` are deleted, except the best one.

On start every rank tries the published checkpoints newest first; a checkpoint whose files do not match
its manifest, or that DeepSpeed fails to load on any rank (all ranks agree through an all-reduce), is
skipped with a warning naming it and the previous one is tried. When checkpoints exist but none loads,
the run fails rather than silently starting from step 0.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.trainer import distributed
from kubetune.trainer.errors import ConfigError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
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


def file_sizes(folder: Path) -> dict[str, int]:
    """Size in bytes of every file under `folder` (relative POSIX paths), the state file excluded."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != STATE_FILE
    }


def read_state(folder: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    return state


def problem(folder: Path) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted, or None when every file is as recorded."""
    try:
        state = read_state(folder)
    except FileNotFoundError:
        return f"{STATE_FILE} is missing"
    except (OSError, ValueError) as error:
        return f"{STATE_FILE} is unreadable ({error})"
    expected: dict[str, int] = state.get("files", {})
    if not expected:
        return f"{STATE_FILE} lists no files"
    actual = file_sizes(folder)
    for name, size in expected.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != size:
            return f"{name} has {actual[name]} bytes, {size} were written"
    return None


def retained(steps: list[int], keep: int, best: int | None) -> set[int]:
    """Steps to keep: the newest `keep`, and the best."""
    newest = sorted(steps, reverse=True)[:keep]
    return set(newest) | ({best} if best is not None else set())


def _write_text_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.tmp")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


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

    def clean_partials(self) -> None:
        """Remove half-written checkpoints of an earlier, killed attempt, then wait for every rank.

        The first process of every node cleans, not only rank 0: a node whose checkpoint folder is not the
        one rank 0 sees (a node-local volume) would otherwise keep its half-written shards forever. On a
        shared volume the nodes remove the same folders; removal tolerates a folder already gone."""
        if self.rank.local_rank == 0 and self.directory.is_dir():
            for stale in self.directory.glob(".partial-step-*"):
                log.warning("removing an incomplete checkpoint from an earlier attempt: %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        distributed.barrier()

    def save(self, engine: Any, step: int, sidecar: dict[str, Any], best_step: int | None) -> Path:
        """Write and publish the checkpoint of `step`; returns its folder."""
        import torch

        partial = self.directory / f".partial-{step_name(step)}"
        final = self.directory / step_name(step)
        if self.rank.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        distributed.barrier()
        engine.save_checkpoint(str(partial), tag=DEEPSPEED_TAG, save_latest=False)
        torch.save(rng_state(), partial / f"rng-rank{self.rank.rank}.pt")
        distributed.barrier()
        if self.rank.is_main:
            state = {**sidecar, "step": step, "world": self.rank.world, "files": file_sizes(partial)}
            _write_text_atomically(partial / STATE_FILE, json.dumps(state, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            _write_text_atomically(self.directory / "latest", final.name + "\n")
            if best_step is not None and best_step == step:
                _write_text_atomically(self.directory / "best", final.name + "\n")
            self._prune(best_step)
        distributed.barrier()
        return final

    def _prune(self, best_step: int | None) -> None:
        steps = [step for step, _ in published(self.directory)]
        keep = retained(steps, self.keep, best_step)
        for step, folder in published(self.directory):
            if step not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def resume(self, engine: Any) -> dict[str, Any] | None:
        """Load the newest checkpoint that loads on every rank; its sidecar state, or None when there is
        no checkpoint at all. ConfigError when checkpoints exist but none loads."""
        candidates = published(self.directory)
        reasons: list[str] = []
        for _step, folder in candidates:
            why = problem(folder)
            if why is None:
                why = self._load(engine, folder)
            failed = distributed.all_reduce_sum([1.0 if why else 0.0], self.rank.device)[0] > 0
            if not failed:
                state = read_state(folder)
                if reasons:
                    log.warning("resumed from %s after skipping newer checkpoint(s): %s", folder, "; ".join(reasons))
                return state
            reason = f"{folder.name}: {why or 'failed to load on another rank'}"
            log.warning("checkpoint %s is unusable, trying the previous one", reason)
            reasons.append(reason)
        if candidates:
            raise ConfigError(
                f"checkpoints exist in {self.directory} but none can be loaded ({'; '.join(reasons)}); "
                "move them away to start from scratch"
            )
        return None

    def _load(self, engine: Any, folder: Path) -> str | None:
        """Load `folder` into the engine and this rank's RNG state; the problem, or None on success."""
        import torch

        try:
            path, _ = engine.load_checkpoint(
                str(folder), tag=DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
            )
        except Exception as error:
            return f"DeepSpeed could not load it: {type(error).__name__}: {str(error)[:300]}"
        if path is None:
            return "DeepSpeed found no checkpoint in it"
        rng_file = folder / f"rng-rank{self.rank.rank}.pt"
        if rng_file.exists():
            restore_rng(torch.load(rng_file, weights_only=False))
        return None

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
