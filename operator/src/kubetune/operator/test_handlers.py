"""When a job is reconciled again without an event: a table."""

from __future__ import annotations

import pytest

from kubetune.operator.handlers import next_reconcile_in
from kubetune.operator.reconciler import Outcome
from kubetune.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(reconcile_interval=5.0, finished_interval=30.0, min_interval=0.1)


@pytest.mark.parametrize(
    ("outcome", "seconds"),
    [
        (Outcome(exists=False), None),  # gone: forgotten until an event brings it back
        (Outcome(exists=True), 5.0),  # running: progress is read every reconcile_interval
        (Outcome(exists=True, check_again_in=1.5), 1.5),  # a deadline before that
        (Outcome(exists=True, check_again_in=90.0), 5.0),
        (Outcome(exists=True, check_again_in=0.0), 0.1),  # never faster than min_interval
        (Outcome(exists=True, finished=True), 30.0),
        (Outcome(exists=True, finished=True, check_again_in=12.0), 12.0),  # its TTL
    ],
)
def test_next_reconcile_in(outcome: Outcome, seconds: float | None) -> None:
    assert next_reconcile_in(outcome, SETTINGS) == seconds
