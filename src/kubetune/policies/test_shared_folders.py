"""Two live jobs in one folder: the newcomer is refused, naming the other job and both fields."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.status import Reason
from kubetune.policies.shared_folders import WrittenFolders, conflict, live_jobs

pytestmark = pytest.mark.timeout(10)

EARLY, LATE = "2026-12-06T10:00:00Z", "2026-12-06T10:05:00Z"


def a_job(name: str, created: str, checkpoints: str | None, output: str | None = None, **status: Any) -> dict[str, Any]:
    storage = {k: v for k, v in {"checkpoints": checkpoints, "output": output}.items() if v}
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": created},
        "spec": {"storage": storage},
        "status": status,
    }


def folders(job: dict[str, Any]) -> WrittenFolders:
    found = WrittenFolders.of(job)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("mine", "other", "refused_by"),
    [
        # same checkpoints, the other launched already: refused
        (a_job("b", LATE, "pvc://ckpt/run"), a_job("a", EARLY, "pvc://ckpt/run", attempt=1), "storage.checkpoints"),
        # inside, or above, the other's folder: the same
        (a_job("b", LATE, "pvc://ckpt/run/b"), a_job("a", EARLY, "pvc://ckpt/run", attempt=1), "storage.checkpoints"),
        (a_job("b", LATE, "pvc://ckpt"), a_job("a", EARLY, "pvc://ckpt/run//", attempt=1), "storage.checkpoints"),
        # my output into the other's checkpoints
        (a_job("b", LATE, "pvc://ckpt/b", "pvc://ckpt/run/out"), a_job("a", EARLY, "pvc://ckpt/run"), "storage.output"),
        # neither launched: the one created first keeps it, even when I am older by name only
        (a_job("b", LATE, "pvc://ckpt/run"), a_job("a", EARLY, "pvc://ckpt/run"), "storage.checkpoints"),
        # the other launched, though created after me: it keeps the folder (it is running in it)
        (a_job("a", EARLY, "pvc://ckpt/run"), a_job("b", LATE, "pvc://ckpt/run", attempt=2), "storage.checkpoints"),
        # my export or checkpoints into a folder the other job reads (its dataset, its model)
        (
            a_job("b", LATE, "pvc://ckpt/b", "pvc://data/set"),
            {**a_job("a", EARLY, "pvc://ckpt/a", attempt=1), "spec": {"dataset": {"train": "pvc://data/set/t.jsonl"}}},
            "storage.output",
        ),
        (
            a_job("b", LATE, "pvc://models"),
            {**a_job("a", EARLY, "pvc://ckpt/a", attempt=1), "spec": {"model": {"source": "pvc://models/llama"}}},
            "storage.checkpoints",
        ),
        # nothing shared
        (a_job("b", LATE, "pvc://ckpt/b"), a_job("a", EARLY, "pvc://ckpt/a", attempt=1), None),
        (
            a_job("b", LATE, "pvc://ckpt/ab"),
            a_job("a", EARLY, "pvc://ckpt/a", attempt=1),
            None,
        ),  # a prefix, not a folder
        (a_job("b", LATE, "pvc://other/run"), a_job("a", EARLY, "pvc://ckpt/run", attempt=1), None),  # another claim
        # I was created first and neither launched: the other one waits, not me
        (a_job("a", EARLY, "pvc://ckpt/run"), a_job("b", LATE, "pvc://ckpt/run"), None),
        # I launched already: never refused again
        (a_job("b", LATE, "pvc://ckpt/run", attempt=1), a_job("a", EARLY, "pvc://ckpt/run", attempt=1), None),
        # no pvc:// folder of mine (an emptyDir of its own)
        (a_job("b", LATE, None), a_job("a", EARLY, "pvc://ckpt/run", attempt=1), None),
    ],
)
def test_a_newcomer_is_refused_when_a_live_job_keeps_the_folder(
    mine: dict[str, Any], other: dict[str, Any], refused_by: str | None
) -> None:
    verdict = conflict(folders(mine), live_jobs([mine, other]))
    if refused_by is None:
        assert verdict is None
        return
    assert verdict is not None
    reason, message = verdict
    assert reason == Reason.FOLDER_IN_USE
    assert message.startswith(f"spec.{refused_by} ") and f"FineTuneJob {other['metadata']['name']}" in message


def test_two_jobs_applied_together_agree_on_which_waits() -> None:
    first, second = a_job("x", EARLY, "pvc://ckpt/run"), a_job("y", EARLY, "pvc://ckpt/run")  # same second
    live = live_jobs([first, second])
    verdicts = [conflict(folders(job), live) for job in (first, second)]
    assert [v is None for v in verdicts] == [True, False]  # uid breaks the tie; exactly one waits


@pytest.mark.parametrize(
    "other",
    [
        a_job("a", EARLY, "pvc://ckpt/run", phase="Succeeded", attempt=1),
        a_job("a", EARLY, "pvc://ckpt/run", phase="Failed", attempt=3),
        {
            **a_job("a", EARLY, "pvc://ckpt/run", attempt=1),
            "metadata": {"name": "a", "uid": "u", "deletionTimestamp": LATE},
        },
    ],
    ids=["succeeded", "failed", "being-deleted"],
)
def test_a_job_that_is_not_live_keeps_no_folder(other: dict[str, Any]) -> None:
    mine = a_job("b", LATE, "pvc://ckpt/run")
    assert conflict(folders(mine), live_jobs([mine, other])) is None
