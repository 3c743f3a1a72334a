"""The folder-owner table: resume, adopt or refuse, from the record, the fingerprint and the checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.api.fingerprint import fingerprint
from kubetune.api.outcome import EarlierJob, ProgressSnapshot
from kubetune.api.status import ConditionType, Metrics, Progress, Reason
from kubetune.policies.folder_owner import (
    Kind,
    Owner,
    OwnerRecordError,
    adoption_note,
    decide,
    refusal,
)
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import decide as reconcile
from kubetune.policies.status import find_condition
from tests.support.builders import a_job

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def owner(name: str = "demo", uid: str | None = "uid-1", **hyperparameters: Any) -> Owner:
    job = a_job(name).in_namespace("team").hyperparameters(**hyperparameters).to_job()
    return Owner.of(job, uid, fingerprint(job.spec))


FIRST = owner()
REAPPLIED = owner(uid="uid-2")
EDITED = owner(uid="uid-2", learning_rate=1e-4)
OTHER_JOB_SAME_RUN = owner("other", uid="uid-3")

TABLE = [
    # (recorded, me, has checkpoints) -> kind, whether a record is written
    ("empty folder", None, FIRST, False, Kind.FRESH, True),
    ("checkpoints of an older kubetune", None, FIRST, True, Kind.LEGACY, True),
    ("a restarted attempt", FIRST, FIRST, True, Kind.OWN, False),
    ("the same YAML applied again", FIRST, REAPPLIED, True, Kind.ADOPT, True),
    ("another job with the same run", FIRST, OTHER_JOB_SAME_RUN, True, Kind.ADOPT, True),
    ("an edited YAML applied again", FIRST, EDITED, True, Kind.REFUSE, False),
    ("this job's own spec changed", FIRST, owner(learning_rate=1e-4), True, Kind.REFUSE, False),
    ("an edited YAML, nothing checkpointed", FIRST, EDITED, False, Kind.FRESH, True),
    ("the same YAML, nothing checkpointed", FIRST, REAPPLIED, False, Kind.FRESH, True),
]


@pytest.mark.parametrize(
    ("recorded", "me", "has_checkpoints", "kind", "writes"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
def test_the_verdict_follows_the_table(
    recorded: Owner | None, me: Owner, has_checkpoints: bool, kind: Kind, writes: bool
) -> None:
    verdict = decide(recorded, me, has_checkpoints)
    assert verdict.kind is kind
    assert (verdict.record is not None) is writes
    if verdict.record is not None:
        written = Owner.from_record(verdict.record)
        assert written.same_job(me) and written.fingerprint == me.fingerprint


def test_an_adoption_records_whose_checkpoints_were_adopted_and_names_them() -> None:
    verdict = decide(FIRST, REAPPLIED, True)
    assert verdict.record is not None and verdict.record["adoptedFrom"] == {
        "name": "demo",
        "namespace": "team",
        "uid": "uid-1",
    }
    assert "FineTuneJob team/demo (uid uid-1)" in adoption_note("/ckpt/run", FIRST)


def test_later_attempts_of_the_adopting_job_name_the_earlier_job_again() -> None:
    """The first attempt may end before the supervisor read its progress: each attempt says it (one Event)."""
    record = decide(FIRST, REAPPLIED, True).record
    assert record is not None
    later = decide(Owner.from_record(record), REAPPLIED, True)
    assert later.kind is Kind.OWN and later.record is None
    assert later.continues is not None and later.continues.same_job(FIRST)
    assert decide(FIRST, FIRST, True).continues is None
    assert decide(FIRST, REAPPLIED, True).continues == FIRST


def test_a_refusal_names_the_fields_old_and_new_and_both_ways_out() -> None:
    message = refusal("/mnt/pvc/ckpt/run", decide(FIRST, EDITED, True))
    assert "FineTuneJob team/demo (uid uid-1)" in message
    assert "spec.hyperparameters.learningRate: 2e-05 -> 0.0001" in message
    assert "spec.storage.checkpoints at a new folder" in message and "delete the checkpoints in this one" in message


def test_a_record_of_an_older_fingerprint_lacking_a_field_is_not_a_difference() -> None:
    record = FIRST.to_record()
    del record["fingerprint"]["fields"]["hyperparameters.learningRate"]
    record["fingerprint"]["digest"] = "sha256:older"
    verdict = decide(Owner.from_record(record), EDITED, True)
    assert verdict.kind is Kind.ADOPT


def test_the_same_job_with_a_longer_fingerprint_rewrites_its_record() -> None:
    record = FIRST.to_record()
    del record["fingerprint"]["fields"]["dataset.packing"]
    record["fingerprint"]["digest"] = "sha256:older"
    verdict = decide(Owner.from_record(record), FIRST, True)
    assert verdict.kind is Kind.OWN and verdict.record is not None


@pytest.mark.parametrize("record", [{}, {"version": 99, "job": {}}, {"version": 1, "job": "x", "fingerprint": {}}, []])
def test_a_record_that_is_not_one_is_refused_as_such(record: Any) -> None:
    with pytest.raises(OwnerRecordError):
        Owner.from_record(record)


def test_the_operator_announces_an_adoption_once_with_a_normal_event_naming_the_earlier_job() -> None:
    earlier = EarlierJob(name="demo", namespace="team", uid="uid-1", checkpoints="/mnt/pvc/ckpt/run")
    snapshot = ProgressSnapshot(attempt=1, progress=Progress(step=40), metrics=Metrics(), updated_at=0)
    adopted = snapshot.model_copy(update={"resumed_from_job": earlier})
    job = a_job("demo").in_namespace("team").to_job()
    running = [WorkerObservation(index=0, attempt=1, state="running")]
    job = job.model_copy(update={"status": reconcile(job, [], NOW).status})
    job = job.model_copy(update={"status": reconcile(job, running, NOW, progress=snapshot).status})
    first = reconcile(job, running, NOW, progress=adopted)
    (event,) = [e for e in first.events if e.reason == Reason.RESUMED_FROM_EARLIER_JOB]
    assert event.type == "Normal" and "FineTuneJob team/demo (uid uid-1)" in event.message
    condition = find_condition(first.status, ConditionType.CHECKPOINTS_ADOPTED)
    assert condition is not None and condition.status == "True"
    again = reconcile(job.model_copy(update={"status": first.status}), running, NOW, progress=adopted)
    assert not [e for e in again.events if e.reason == Reason.RESUMED_FROM_EARLIER_JOB]
