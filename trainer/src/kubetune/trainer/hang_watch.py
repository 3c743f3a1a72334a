"""The trainer's own hang detector: a thread per rank that beats to the gang's store and, on ranks 0 and 1,
judges every rank's beats (the verdict: kubetune.policies.hang).

Why in the trainer: a stopped rank or a collective that waits for ever never exits and never writes a
result, so neither the operator nor the local runner would ever see a failure; torch's collective timeout
(30 min here: a first evaluation with generation may keep ranks waiting that long) is far too late for a
gang of idle GPUs, and names no rank. The judge that sees the hang writes a `Hung` result naming the
ranks and the step and ends its process with exit code 11 (retryable): its supervisor ends the rest of
the gang and restarts it from the last checkpoint, exactly as for any other retryable failure.

The beats go through the rendezvous store the launcher already runs (torchrun's or the local runner's
elastic agent, at MASTER_ADDR:MASTER_PORT), on a connection of their own, so they still travel while the
ranks' process group is stuck; a gang of one uses an in-process store. `Motion` is what the training
thread tells the watch: every forward pass of the model (a forward pre-hook, so training, evaluation and
generation all count without each loop saying so), each optimizer step, and the long single calls
(checkpoint writes, the export) during which stillness is expected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from kubetune.policies.hang import JUDGES, Hang, RankBeat, Seen, declares, observe, verdict
from kubetune.trainer.distributed import Rank

log = logging.getLogger(__name__)

#: Seconds between beats: short enough that a judge sees a change within a fifth of the timeout, long
#: enough that a thousand ranks cost the store little (one write each, two judges reading all).
LONGEST_INTERVAL_SECONDS = 5.0
SHORTEST_INTERVAL_SECONDS = 0.5
#: Seconds a store operation may wait (the store is on worker 0's launcher; gone, the gang ends anyway).
STORE_TIMEOUT_SECONDS = 30


class Motion:
    """What this rank's training thread last did, for the watch thread to read. Plain attribute writes:
    each is atomic under the GIL, and a reader that sees one counter a beat late loses nothing."""

    def __init__(self) -> None:
        self.moves = 0
        self.step = 0
        self.armed = False
        self.paused: str | None = None
        self.longest_step_seconds = 0.0
        self.on_first_step: Callable[[], None] | None = None
        """Called on the training thread when the attempt's first optimizer step is done."""

    def moved(self, *_: Any) -> None:
        """A forward pass began (a forward pre-hook's signature) or other work moved on."""
        self.moves += 1

    def stepped(self, step: int, seconds: float) -> None:
        """Optimizer step `step` is done after `seconds`; from the first one on, stillness is judged."""
        if not self.armed and self.on_first_step is not None:
            self.on_first_step()
        self.step, self.armed = step, True
        self.longest_step_seconds = max(self.longest_step_seconds, seconds)
        self.moves += 1

    @contextlib.contextmanager
    def unwatched(self, what: str) -> Iterator[None]:
        """One long call (`checkpointing`, `exporting`) during which no forward pass is expected."""
        self.paused = what
        try:
            yield
        finally:
            self.paused = None
            self.moves += 1


def interval_seconds(configured: int | None) -> float:
    """Beat interval: a fifth of the configured timeout, between the shortest and longest intervals."""
    if configured is None:
        return LONGEST_INTERVAL_SECONDS
    return min(LONGEST_INTERVAL_SECONDS, max(SHORTEST_INTERVAL_SECONDS, configured / 5))


def gang_store(rank: Rank, attempt: int) -> Any:
    """A store every rank of this attempt reaches: the launcher's rendezvous store (its own connection),
    or an in-process one for a gang of one. Keys live under kubetune/beat/<attempt>/."""
    import torch.distributed

    dist: Any = torch.distributed  # the store classes are public, but torch's stubs do not re-export them
    if rank.world == 1:
        store: Any = dist.HashStore()
    else:
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=STORE_TIMEOUT_SECONDS),
            wait_for_workers=False,
        )
    return dist.PrefixStore(f"kubetune/beat/{attempt}", store)


class HangWatch:
    """One rank's watch: `start` it after joining the gang, `watch_model` once the model exists, and
    `finish` when the rank leaves the run, whatever the outcome."""

    def __init__(self, rank: Rank, configured: int | None, store: Any, on_hang: Callable[[Hang], None]) -> None:
        self.rank, self.configured, self.store, self.on_hang = rank, configured, store, on_hang
        self.motion = Motion()
        self.interval = interval_seconds(configured)
        self.alive = 0
        self.seen: dict[int, Seen] = {}
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kubetune-hang-watch", daemon=True)
        self._store_failed = False
        # One beat posted at a time: the watch thread's beat may not land after `finish`'s last one.
        self._posting = threading.Lock()

    def start(self) -> HangWatch:
        self._post(finished=False)
        self.thread.start()
        return self

    def watch_model(self, module: Any) -> None:
        """Count every forward pass of `module` as a move (training, evaluation and generation alike). The
        hook sits on the input embeddings, which every pass goes through: peft's `generate` calls the
        wrapped model's forward, not the wrapper's, so a hook on the top module would miss LoRA's answers."""
        inner = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
        (inner if inner is not None else module).register_forward_pre_hook(self.motion.moved)

    def finish(self) -> None:
        """This rank leaves the run: its last beat says so, and nothing is judged any more."""
        self.finished.set()
        # Bounded: a beat stuck on an unreachable store must not keep the rank from leaving.
        if self._posting.acquire(timeout=max(self.interval, 1.0)):
            try:
                with contextlib.suppress(Exception):
                    self._set(finished=True)
            finally:
                self._posting.release()

    def _beat(self, finished: bool) -> RankBeat:
        m = self.motion
        return RankBeat(
            self.rank.rank, self.alive, m.moves, m.step, m.armed, m.paused, m.longest_step_seconds, finished
        )

    def _post(self, finished: bool) -> None:
        with self._posting:
            if not finished and self.finished.is_set():
                return  # the rank has left; its last beat says so
            self._set(finished)

    def _set(self, finished: bool) -> None:
        self.alive += 1
        self.store.set(str(self.rank.rank), self._beat(finished).to_json())

    def check(self, now: float) -> Hang | None:
        """Post this rank's beat and, on a judge, read every rank's and judge them at `now` (monotonic s);
        the hang when this rank is the one to report it."""
        self._post(finished=False)
        if self.rank.rank not in JUDGES:
            return None
        keys = [str(r) for r in range(self.rank.world)]
        if not self.store.check(keys):
            return None  # some rank has not started its watch yet
        beats = [RankBeat.from_json(value) for value in self.store.multi_get(keys)]
        self.seen = observe(self.seen, beats, now)
        hang = verdict(self.seen, self.rank.world, now, self.configured)
        if hang is not None and declares(self.rank.rank, self.seen, now, self.configured):
            return hang
        return None

    def _run(self) -> None:
        while not self.finished.wait(self.interval):
            try:
                hang = self.check(time.monotonic())
            except Exception as error:  # the store's host (worker 0's launcher) is gone: the gang ends anyway
                if not self._store_failed:
                    log.warning("hang watch: the gang's store is unreachable (%s); still trying", error)
                self._store_failed = True
                continue
            if hang is not None and not self.finished.is_set():
                self.on_hang(hang)
                return


def start(rank: Rank, configured: int | None, attempt: int, on_hang: Callable[[Hang], None]) -> HangWatch:
    """A started watch for this rank (call after joining the process group)."""
    return HangWatch(rank, configured, gang_store(rank, attempt), on_hang).start()
