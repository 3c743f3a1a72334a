"""The owner record in a checkpoint folder: written by rank 0, refused or adopted on the next start."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ExitReason, ProgressSnapshot, TrainerResult
from kubetune.api.status import FineTuneJobStatus
from kubetune.policies.preflight import Devices
from kubetune.policies.status import apply_progress, apply_result, transition_events
from kubetune.trainer import ownership, preflight
from kubetune.trainer.config import RunPaths
from kubetune.trainer.errors import ConfigError, TrainerError
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(30)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def a_run(name: str = "demo", **hyperparameters: Any) -> FineTuneJob:
    return a_job(name).in_namespace("team").hyperparameters(**hyperparameters).to_job()


def with_a_checkpoint(folder: Path) -> Path:
    (folder / "step-00000004").mkdir(parents=True)
    return folder


def recorded(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((folder / ownership.OWNER_FILE).read_text())
    return record


def test_the_first_run_records_its_owner_and_continues_nothing(tmp_path: Path) -> None:
    assert ownership.claim(a_run(), tmp_path, is_main=True, uid="uid-1") is None
    record = recorded(tmp_path)
    assert record["job"] == {"name": "demo", "namespace": "team", "uid": "uid-1"}
    assert record["fingerprint"]["fields"]["hyperparameters.learningRate"] == 2e-5
    assert record["fingerprint"]["digest"].startswith("sha256:")


def test_only_rank_zero_writes(tmp_path: Path) -> None:
    assert ownership.claim(a_run(), tmp_path, is_main=False, uid="uid-1") is None
    assert not (tmp_path / ownership.OWNER_FILE).exists()


def test_the_same_yaml_applied_again_resumes_and_names_the_earlier_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ownership.claim(a_run(), with_a_checkpoint(tmp_path), is_main=True, uid="uid-1")
    assert ownership.problems(a_run(), tmp_path) == []
    with caplog.at_level(logging.INFO, logger=ownership.__name__):
        earlier = ownership.claim(a_run(), tmp_path, is_main=True, uid="uid-2")
    assert earlier is not None and (earlier.name, earlier.namespace, earlier.uid) == ("demo", "team", "uid-1")
    assert "FineTuneJob team/demo (uid uid-1)" in caplog.text
    assert recorded(tmp_path)["job"]["uid"] == "uid-2"
    assert recorded(tmp_path)["adoptedFrom"]["uid"] == "uid-1"
    again = ownership.claim(a_run(), tmp_path, is_main=True, uid="uid-2")  # its next attempt says it again
    assert again == earlier


def test_a_restarted_attempt_of_the_same_job_continues_quietly(tmp_path: Path) -> None:
    ownership.claim(a_run(), with_a_checkpoint(tmp_path), is_main=True, uid="uid-1")
    assert ownership.claim(a_run(), tmp_path, is_main=True, uid="uid-1") is None


def test_an_edited_yaml_is_refused_naming_the_field_old_and_new(tmp_path: Path) -> None:
    ownership.claim(a_run(), with_a_checkpoint(tmp_path), is_main=True, uid="uid-1")
    edited = a_run(learning_rate=1e-4)
    (problem,) = ownership.problems(edited, tmp_path)
    assert problem.field == "spec.storage.checkpoints"
    assert "spec.hyperparameters.learningRate: 2e-05 -> 0.0001" in problem.message
    with pytest.raises(ConfigError, match="learningRate"):
        ownership.claim(edited, tmp_path, is_main=True, uid="uid-2")
    assert recorded(tmp_path)["job"]["uid"] == "uid-1"  # the refused job recorded nothing


def test_checkpoints_without_a_record_resume_with_a_warning_and_get_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=ownership.__name__):
        assert ownership.claim(a_run(), with_a_checkpoint(tmp_path), is_main=True, uid="uid-1") is None
    assert "no owner record" in caplog.text
    assert recorded(tmp_path)["job"]["uid"] == "uid-1"


def test_a_damaged_record_is_a_permanent_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / ownership.OWNER_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"owner\.json is not a kubetune owner record") as raised:
        ownership.problems(a_run(), tmp_path)
    assert raised.value.retryable is False


def test_the_preflight_refuses_a_folder_of_a_different_run_as_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    builder = a_job("pre").model(str(tmp_path / "model")).train(str(tmp_path / "train.jsonl")).accelerator("cpu")
    job = builder.spec({"distributed": {"precision": "fp32"}}).to_job()
    paths = RunPaths(tmp_path / "job.yaml", tmp_path / "work", tmp_path / "ckpt", tmp_path / "out")
    ownership.claim(job, with_a_checkpoint(paths.checkpoints), is_main=True, uid="uid-1")
    preflight.check(job, paths, Devices())  # the same run: no problem
    edited = builder.spec({"distributed": {"precision": "fp32"}, "hyperparameters": {"seed": 7}}).to_job()
    with pytest.raises(TrainerError) as raised:
        preflight.check(edited, paths, Devices())
    assert raised.value.reason is ExitReason.INVALID_CONFIG and not raised.value.retryable
    assert "spec.hyperparameters.seed: 42 -> 7" in raised.value.message


def test_the_operator_posts_a_normal_event_naming_the_earlier_job(tmp_path: Path) -> None:
    ownership.claim(a_run(), with_a_checkpoint(tmp_path), is_main=True, uid="uid-1")
    earlier = ownership.claim(a_run(), tmp_path, is_main=True, uid="uid-2")
    snapshot = ProgressSnapshot.model_validate(
        {"attempt": 1, "progress": {}, "metrics": {}, "updatedAt": 0, "resumedFromJob": earlier}
    )
    before = FineTuneJobStatus(attempt=1)
    after = apply_progress(before, ProgressSnapshot.model_validate_json(snapshot.model_dump_json()), 1, NOW)
    (event,) = transition_events(before, after)
    assert (event.type, event.reason) == ("Normal", "ResumedFromEarlierJob")
    assert "FineTuneJob team/demo (uid uid-1)" in event.message
    result = TrainerResult(
        outcome="Succeeded", reason="Succeeded", message="", retryable=False, resumed_from_job=earlier
    )
    assert transition_events(before, apply_result(before, result, NOW)) == [event]
    assert transition_events(after, apply_progress(after, snapshot, 1, NOW)) == []  # said once
