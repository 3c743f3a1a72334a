"""Suspension: queue names and what a suspended job says."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.job import FineTuneJob
from kubetune.policies.suspension import queue_name, suspended_message
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(10)


def job(labels: dict[str, str] | None = None, scheduling: dict[str, Any] | None = None) -> FineTuneJob:
    suspended = a_job("j").model("hf://a/b").train("t.jsonl").suspended()
    return suspended.labels(labels).spec(scheduling=scheduling).to_job()


@pytest.mark.parametrize(
    ("labels", "scheduling", "queue"),
    [
        (None, None, None),
        ({"kueue.x-k8s.io/queue-name": "team-a"}, None, "team-a"),
        (None, {"queueName": "team-b"}, "team-b"),
        ({"kueue.x-k8s.io/queue-name": "team-a"}, {"queueName": "team-b"}, "team-a"),
    ],
)
def test_queue_name(labels: dict[str, str] | None, scheduling: dict[str, Any] | None, queue: str | None) -> None:
    assert queue_name(job(labels, scheduling)) == queue


@pytest.mark.parametrize(
    ("labels", "started", "words"),
    [
        ({"kueue.x-k8s.io/queue-name": "q"}, False, "waiting for admission by queue q"),
        (None, False, "suspended before start"),
        ({"kueue.x-k8s.io/queue-name": "q"}, True, "checkpoints kept"),
    ],
)
def test_suspended_message(labels: dict[str, str] | None, started: bool, words: str) -> None:
    assert words in suspended_message(job(labels), started)
