"""The runner's last words: the exit code, and where to look when the message alone cannot say what to do."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason
from kubetune.local.runner import _summarise
from kubetune.local.workdir import Workdir
from kubetune.policies.status import set_condition

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def failed(reason: str, message: str) -> FineTuneJobStatus:
    status = FineTuneJobStatus(phase="Failed", attempt=2, message=message)
    return set_condition(status, ConditionType.FAILED, "True", reason, message, NOW)


@pytest.mark.parametrize(
    ("status", "code", "points_at_logs"),
    [
        (failed(Reason.DATA_ERROR, "worker 0: DataError: train.jsonl: line 3: not valid JSON"), 2, False),
        (failed(Reason.INVALID_SPEC, "worker 0: InvalidConfig: spec.distributed.precision: ..."), 2, False),
        (failed(Reason.WORKER_FAILED, "worker 1 exited with code 1; gave up after 2 restart(s)"), 1, True),
        (FineTuneJobStatus(phase="Succeeded", attempt=1, message="trained 8 steps"), 0, False),
    ],
)
def test_a_failure_says_where_to_look_unless_its_message_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], status: FineTuneJobStatus, code: int, points_at_logs: bool
) -> None:
    workdir = Workdir(tmp_path)
    assert _summarise(status, workdir, None) == code
    printed = capsys.readouterr().out
    assert f"{status.phase}: {status.message}" in printed
    assert (f"{workdir.attempt_logs(status.attempt)}/" in printed) == points_at_logs
