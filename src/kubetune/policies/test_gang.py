"""The gang's shape: observed workers -> workers to create and delete."""

from __future__ import annotations

import pytest

from kubetune.policies.gang import GangPlan, WorkerRef, gang_broken, keep, launch, remove_all, remove_unfinished
from kubetune.policies.observed import WorkerObservation

pytestmark = pytest.mark.timeout(10)


def w(attempt: int, index: int, state: str = "running", deleting: bool = False) -> WorkerObservation:
    return WorkerObservation(index=index, attempt=attempt, state=state, deleting=deleting)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("workers", "plan"),
    [
        ([], GangPlan(2, create=(0, 1, 2))),
        ([w(1, 0)], GangPlan(1, delete=(WorkerRef(1, 0),))),
        ([w(1, 0, deleting=True)], GangPlan(1)),  # being deleted: wait, do not start
    ],
)
def test_launch_only_when_the_old_gang_is_gone(workers: list[WorkerObservation], plan: GangPlan) -> None:
    assert launch(workers, 2, 3) == plan


@pytest.mark.parametrize(
    ("workers", "create", "delete"),
    [
        ([], (0, 1, 2), ()),
        ([w(2, 0, "pending")], (1, 2), ()),
        ([w(2, 0, "running")], (), ()),  # started: missing workers mean a broken gang, never a patch-up
        ([w(1, 0), w(2, 0, "pending")], (), (WorkerRef(1, 0),)),
        ([w(1, 0, deleting=True), w(2, 0, "pending")], (), ()),
        ([w(2, 0), w(2, 1), w(2, 2)], (), ()),
    ],
)
def test_keep(workers: list[WorkerObservation], create: tuple[int, ...], delete: tuple[WorkerRef, ...]) -> None:
    assert keep(workers, 2, 3) == GangPlan(2, create=create, delete=delete)


@pytest.mark.parametrize(
    ("workers", "broken"),
    [
        ([w(1, 0, "pending")], []),
        ([w(1, 0)], [1]),
        ([w(1, 0), w(1, 1, deleting=True)], [1]),
        ([w(1, 0), w(1, 1, "failed", deleting=True)], []),  # terminated: the retry policy judges it
        ([w(1, 0), w(1, 1)], []),
    ],
)
def test_gang_broken(workers: list[WorkerObservation], broken: list[int]) -> None:
    assert gang_broken(workers, 1, 2) == broken


def test_removal_skips_workers_already_being_removed_and_keeps_finished_ones_when_asked() -> None:
    workers = [w(1, 0, "succeeded"), w(1, 1, deleting=True), w(1, 2)]
    assert remove_all(workers, 1).delete == (WorkerRef(1, 0), WorkerRef(1, 2))
    assert remove_unfinished(workers, 1).delete == (WorkerRef(1, 2),)
