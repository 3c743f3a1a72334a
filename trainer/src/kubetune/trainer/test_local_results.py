"""A pod's termination message carries the most telling of its local ranks' results."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from kubetune.api.outcome import TrainerResult
from kubetune.trainer.local_results import most_telling, publish


def result(outcome: str, reason: str, message: str = "") -> TrainerResult:
    retryable = reason in ("OutOfMemory", "PeerLost", "Interrupted")
    return TrainerResult(outcome=outcome, reason=reason, message=message or reason, retryable=retryable)


OK = result("Succeeded", "Succeeded")
OOM = result("Failed", "OutOfMemory", "CUDA out of memory on local rank 3: lower microBatchSize")
PEER = result("Failed", "PeerLost", "a peer vanished")
DATA = result("Failed", "DataError", "train.jsonl:7: not valid JSON")
SIGNAL = result("Interrupted", "Interrupted", "SIGTERM")


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ({0: OK, 1: OK}, OK),
        ({0: PEER, 3: OOM}, OOM),  # rank 0 only echoes rank 3's failure
        ({0: PEER, 1: PEER}, PEER),
        ({2: DATA, 1: OOM, 0: PEER}, OOM),  # the lowest rank with a failure of its own
        ({0: SIGNAL, 1: OOM}, OOM),
        ({0: OK, 1: SIGNAL}, SIGNAL),
        ({1: OK}, OK),
    ],
)
def test_most_telling(results: dict[int, TrainerResult], expected: TrainerResult) -> None:
    assert most_telling(results) == expected


def test_publish_keeps_the_real_failure_whichever_rank_finishes_last(tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    publish(tmp_path / "results", 3, OOM, termination, "result.json")
    publish(tmp_path / "results", 0, PEER, termination, "result.json")  # rank 0 last: still rank 3's OOM
    assert json.loads(termination.read_text())["reason"] == "OutOfMemory"
    assert "lower microBatchSize" in termination.read_text()


def _publish(folder: str, rank: int, termination: str) -> None:
    publish(Path(folder), rank, OOM if rank == 5 else PEER, Path(termination), "result.json")


def test_concurrent_ranks_agree_on_one_message(tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_publish, args=(str(tmp_path / "r"), r, str(termination))) for r in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert json.loads(termination.read_text())["reason"] == "OutOfMemory"
