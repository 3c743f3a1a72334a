"""A job in a protected namespace fails once, its gang removed; elsewhere nothing changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubetune.api.job import FineTuneJob
from kubetune.api.status import FineTuneJobStatus
from kubetune.policies.namespaces import refused
from kubetune.policies.observed import WorkerObservation
from tests.support.builders import a_cpu_gang

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PROTECTED = ("kube-system", "kube-public", "kube-node-lease", "kubetune")


def job(namespace: str, status: FineTuneJobStatus | None = None) -> FineTuneJob:
    return a_cpu_gang("demo").in_namespace(namespace).to_job().model_copy(update={"status": status})


def running(index: int) -> WorkerObservation:
    return WorkerObservation(index=index, attempt=1, state="running")


def test_a_team_namespace_is_not_judged() -> None:
    assert refused(job("team-a"), [], PROTECTED, T0) is None


@pytest.mark.parametrize("namespace", PROTECTED)
def test_a_new_job_fails_and_gets_nothing(namespace: str) -> None:
    decision = refused(job(namespace), [], PROTECTED, T0)
    assert decision is not None and decision.status.phase == "Failed" and decision.plan.create == ()
    assert decision.status.message == (
        f"namespace {namespace} is protected: the operator runs no job in kube-system, kube-public, "
        f"kube-node-lease, kubetune; create the job in a team's namespace"
    )
    assert [e.reason for e in decision.events if e.type == "Warning"] == ["ProtectedNamespace"]


def test_a_gang_an_older_operator_started_there_is_removed() -> None:
    decision = refused(
        job("kubetune", FineTuneJobStatus(phase="Running", attempt=1)), [running(0), running(1)], PROTECTED, T0
    )
    assert decision is not None and decision.status.phase == "Failed"
    assert sorted(ref.index for ref in decision.plan.delete) == [0, 1]


def test_a_job_that_failed_there_is_left_as_it_is() -> None:
    failed = refused(job("kube-system"), [], PROTECTED, T0)
    assert failed is not None
    again = refused(job("kube-system", failed.status), [], PROTECTED, T0)
    assert again is not None and again.status == failed.status and again.events == ()
