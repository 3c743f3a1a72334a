"""When a job is reconciled again without an event: a table."""

from __future__ import annotations

import pytest

from kubetune.operator.handlers import next_reconcile_in
from kubetune.operator.reconciler import Outcome
from kubetune.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    reconcile_interval=5.0, finished_interval=30.0, min_interval=0.1, running_resync_interval=300.0
)


@pytest.mark.parametrize(
    ("outcome", "seconds"),
    [
        (Outcome(exists=False), None),  # gone: forgotten until an event brings it back
        (Outcome(exists=True), 5.0),  # not running yet (pending, backing off): every reconcile_interval
        (Outcome(exists=True, polled=True), 300.0),  # running: its rank 0's progress asks when it has news
        (Outcome(exists=True, polled=True, check_again_in=20.0), 20.0),  # its deadline
        (Outcome(exists=True, check_again_in=1.5), 1.5),  # a deadline before that
        (Outcome(exists=True, check_again_in=90.0), 5.0),
        (Outcome(exists=True, check_again_in=0.0), 0.1),  # never faster than min_interval
        (Outcome(exists=True, finished=True), 30.0),
        (Outcome(exists=True, finished=True, check_again_in=12.0), 12.0),  # its TTL
    ],
)
def test_next_reconcile_in(outcome: Outcome, seconds: float | None) -> None:
    assert next_reconcile_in(outcome, SETTINGS) == seconds
