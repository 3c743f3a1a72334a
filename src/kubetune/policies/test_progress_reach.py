"""ProgressUnavailable: raised after reads fail for longer than the bound, with the fix; cleared when they work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason
from kubetune.policies.gang import GangPlan
from kubetune.policies.progress_reach import ProgressReach, apply_reach, with_reach
from kubetune.policies.reconcile import Decision
from kubetune.policies.status import find_condition, set_condition

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=30)
AFTER = 20.0
ADDRESS = "http://10.0.0.7:9400/progress"
NONE = FineTuneJobStatus(phase="Running")
RAISED = set_condition(NONE, ConditionType.PROGRESS_UNAVAILABLE, "True", Reason.PROGRESS_UNREACHABLE, "x", T0)
CLEARED = set_condition(NONE, ConditionType.PROGRESS_UNAVAILABLE, "False", Reason.PROGRESS_READABLE, "x", T0)


def failing(seconds: float) -> ProgressReach:
    return ProgressReach(False, ADDRESS, "timed out after 2.0s", seconds)


OK = ProgressReach(True, ADDRESS)
TOO_LARGE = "GET /progress answered with more than 65536 bytes (the operator reads at most 65536)"
REFUSED = ProgressReach(True, ADDRESS, refused=TOO_LARGE)


@pytest.mark.parametrize(
    ("before", "reach", "after"),
    [
        (NONE, None, None),  # no read tried: nothing changes
        (NONE, OK, None),  # never raised: not listed
        (NONE, failing(5), None),  # a blip, or a trainer starting: within the bound
        (NONE, failing(AFTER), ("True", Reason.PROGRESS_UNREACHABLE)),
        (RAISED, failing(0), ("True", Reason.PROGRESS_UNREACHABLE)),  # an operator restarted counts again; stays raised
        (RAISED, OK, ("False", Reason.PROGRESS_READABLE)),
        (CLEARED, failing(5), ("False", Reason.PROGRESS_READABLE)),
        (CLEARED, failing(25), ("True", Reason.PROGRESS_UNREACHABLE)),
        (NONE, REFUSED, ("True", Reason.RANK_ZERO_REFUSED)),  # at once: not a network's fault, no bound to wait
        (RAISED, REFUSED, ("True", Reason.RANK_ZERO_REFUSED)),
        (apply_reach(NONE, REFUSED, T0, AFTER), OK, ("False", Reason.PROGRESS_READABLE)),  # answers well again
        (apply_reach(NONE, REFUSED, T0, AFTER), failing(AFTER), ("True", Reason.RANK_ZERO_REFUSED)),  # no flapping
    ],
    ids=[
        "no-read",
        "ok",
        "blip",
        "raised",
        "stays",
        "cleared",
        "cleared-blip",
        "again",
        "refused",
        "refused-after-unreachable",
        "refused-then-ok",
        "refused-then-silent",
    ],
)
def test_apply_reach(before: FineTuneJobStatus, reach: ProgressReach | None, after: tuple[str, str] | None) -> None:
    condition = find_condition(apply_reach(before, reach, T1, AFTER), ConditionType.PROGRESS_UNAVAILABLE)
    assert (None if condition is None else (condition.status, condition.reason)) == after


def test_the_message_names_the_address_the_error_and_the_fix() -> None:
    condition = find_condition(apply_reach(NONE, failing(60), T1, AFTER), ConditionType.PROGRESS_UNAVAILABLE)
    assert condition is not None
    for part in (ADDRESS, "timed out", "NetworkPolicy", "TCP 9400", "app.kubernetes.io/component: trainer"):
        assert part in condition.message
    assert "networkPolicy.enabled=true" in condition.message


def test_with_reach_derives_a_warning_event_from_the_status_written_last() -> None:
    decision = Decision(status=NONE, plan=GangPlan(attempt=1))
    raised = with_reach(decision, NONE, failing(60), T1, AFTER)
    assert [(e.type, e.reason) for e in raised.events] == [("Warning", Reason.PROGRESS_UNREACHABLE)]
    assert with_reach(decision, NONE, None, T1, AFTER) is decision


def test_a_refused_answer_is_named_with_what_was_refused_and_where() -> None:
    condition = find_condition(apply_reach(NONE, REFUSED, T1, AFTER), ConditionType.PROGRESS_UNAVAILABLE)
    assert condition is not None
    assert ADDRESS in condition.message and TOO_LARGE in condition.message
    assert "termination message" in condition.message
