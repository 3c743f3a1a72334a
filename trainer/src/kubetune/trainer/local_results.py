"""Every local rank's result, so that a pod's termination message tells its first real failure.

torchrun runs P ranks in one pod, and Kubernetes keeps one termination message per container. When only
local rank 0 wrote it, an out-of-memory on local rank 3 reached the operator as local rank 0's
"PeerLost" (its peer vanished), and the OOM advice was lost. Now every rank writes its own result to
`<workdir>/local-results/attempt-<N>/rank-<local rank>.json` and then, under a lock, rewrites the
termination message from all the results present, choosing the most telling one:

- all succeeded: the lowest local rank's (in worker 0's pod that is rank 0, with the whole result);
- some failed: the lowest local rank whose failure is its own (not PeerLost or Interrupted, which only
  echo another rank's failure or a signal); else the lowest failed local rank.

The last rank to finish writes last and sees every result written before it, so the message ends up
chosen from all of them. (torchrun's own per-rank error files, `TORCHELASTIC_ERROR_FILE`, hold a
traceback for its log, not a result: this is the same idea with the trainer's classified results.)
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator, Mapping
from pathlib import Path

from kubetune.api.outcome import ExitReason, TrainerResult

#: Failures that only echo another rank's failure, or a signal from outside.
ECHOES = frozenset({ExitReason.PEER_LOST.wire_name, ExitReason.INTERRUPTED.wire_name})


def most_telling(results: Mapping[int, TrainerResult]) -> TrainerResult:
    """The result the pod's termination message should carry, by local rank."""
    failed = {rank: result for rank, result in results.items() if result.outcome in ("Failed", "Interrupted")}
    if not failed:
        return results[min(results)]
    own = {rank: result for rank, result in failed.items() if result.reason not in ECHOES}
    chosen = own or failed
    return chosen[min(chosen)]


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_all(folder: Path) -> dict[int, TrainerResult]:
    results = {}
    for path in folder.glob("rank-*.json"):
        with contextlib.suppress(ValueError, OSError):  # a file being replaced: its writer rewrites the message
            results[int(path.stem.removeprefix("rank-"))] = TrainerResult.model_validate_json(path.read_text())
    return results


def forget(folder: Path, local_rank: int) -> None:
    """At a rank's start: drop what this local rank recorded in an earlier run of the same workdir and attempt
    (a run by hand, or a resumed local run), so that only this run's results are read."""
    (folder / f"rank-{local_rank}.json").unlink(missing_ok=True)


def publish(folder: Path, local_rank: int, result: TrainerResult, termination_path: Path, result_file: str) -> None:
    """Record this rank's result in `folder` and rewrite the termination message from every result there.
    `result_file` names the lasting copy of the whole result when the message must be shortened."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{local_rank}.json").write_text(result.model_dump_json(by_alias=True), encoding="utf-8")
    with _locked(folder):
        chosen = most_telling(read_all(folder) or {local_rank: result})
        termination_path.write_text(chosen.termination_message(result_file), encoding="utf-8")
