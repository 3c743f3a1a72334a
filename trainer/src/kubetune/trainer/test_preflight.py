"""A rank's preflight: each thing that cannot work here is a permanent error naming its field."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.invocation import ACCELERATOR_ENV
from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ExitReason
from kubetune.policies.preflight import Devices
from kubetune.trainer import preflight
from kubetune.trainer.config import RunPaths
from kubetune.trainer.errors import TrainerError, classify
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(30)

CPU_ONLY = Devices()
GiB = 2**30


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a model (1 GiB of weights, sparse) and a training file; no supervisor's environment."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with (tmp_path / "model" / "model.safetensors").open("wb") as weights:
        weights.truncate(GiB)
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n')
    for name in (ACCELERATOR_ENV, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def a_local_job(place: Path, **spec: Any) -> FineTuneJob:
    builder = a_job("pre").model(str(place / "model")).train(str(place / "train.jsonl")).accelerator("cpu")
    return builder.spec({"distributed": {"precision": "fp32"}}).spec(spec).to_job()


def paths_in(place: Path) -> RunPaths:
    return RunPaths(place / "job.yaml", place / "work", place / "work" / "checkpoints", place / "work" / "output")


def deny(*paths: Path) -> Callable[[Any, int], bool]:
    """os.access that refuses `paths` (tests run as root, where permission bits deny nothing)."""
    allowed = os.access
    return lambda target, mode: Path(target) not in paths and allowed(target, mode)


def failure(job: FineTuneJob, place: Path, devices: Devices = CPU_ONLY) -> TrainerError:
    with pytest.raises(TrainerError) as raised:
        preflight.check(job, paths_in(place), devices)
    return raised.value


@pytest.mark.parametrize(
    ("spec", "reason", "words"),
    [
        ({"distributed": {"accelerator": "nvidia-gpu"}}, ExitReason.INVALID_CONFIG, "spec.distributed.accelerator: nvidia-gpu but no CUDA device is visible"),
        ({"distributed": {"accelerator": None}}, ExitReason.INVALID_CONFIG, "spec.distributed.accelerator: unset, which means nvidia-gpu"),
        ({"distributed": {"precision": "fp16"}}, ExitReason.INVALID_CONFIG, "spec.distributed.precision: fp16 has no kernels on this CPU"),
        ({"model": {"source": "missing-model"}}, ExitReason.MODEL_ERROR, "spec.model.source: missing-model: not found"),
        ({"model": {"ggufFile": "model.gguf"}}, ExitReason.MODEL_ERROR, "spec.model.ggufFile: model.gguf: not found"),
        ({"dataset": {"train": "nope.jsonl"}}, ExitReason.DATA_ERROR, "spec.dataset.train: nope.jsonl: not found"),
        ({"dataset": {"validation": "model"}}, ExitReason.DATA_ERROR, "spec.dataset.validation: model: "),  # a folder
        (
            {"evaluation": {"baselines": {}, "referenceModel": {"source": "ref"}}},
            ExitReason.MODEL_ERROR,
            "spec.evaluation.referenceModel.source: ref: not found",
        ),
    ],
)  # fmt: skip
def test_what_cannot_work_here_is_a_permanent_error_naming_the_field(
    place: Path, spec: dict[str, Any], reason: ExitReason, words: str
) -> None:
    error = failure(a_local_job(place, **spec), place)
    assert words in error.message
    assert classify(error) == (reason, error.message, False), "a preflight failure must never be retried"
    assert "Error" not in error.message  # no exception name: a sentence saying what is wrong


def test_every_problem_is_listed_and_the_first_decides_the_exit(place: Path) -> None:
    job = a_local_job(place, distributed={"precision": "fp16"}, dataset={"train": "nope.jsonl"})
    error = failure(job, place)
    assert error.reason is ExitReason.INVALID_CONFIG
    assert "spec.distributed.precision" in error.message and "spec.dataset.train" in error.message


def test_an_unreadable_dataset_or_model_is_named(place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", deny(place / "train.jsonl"))
    assert "spec.dataset.train: " in failure(a_local_job(place), place).message
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", deny(place / "model"))
    error = failure(a_local_job(place), place)
    assert error.reason is ExitReason.MODEL_ERROR and "permission denied" in error.message


@pytest.mark.parametrize(
    ("denied", "named"),
    [
        (("model.safetensors",), "model.safetensors"),
        (("tokenizer.json", "model.safetensors"), "model.safetensors, tokenizer.json"),
    ],
)
def test_model_files_this_user_may_not_read_are_named_with_the_user(
    place: Path, monkeypatch: pytest.MonkeyPatch, denied: tuple[str, ...], named: str
) -> None:
    """(transformers would report them as missing: a claim written by another user is the usual cause)"""
    (place / "model" / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(os, "access", deny(*(place / "model" / name for name in denied)))
    error = failure(a_local_job(place), place)
    assert error.reason is ExitReason.MODEL_ERROR, error
    assert f"spec.model.source: {place / 'model'}: cannot read {named} as user {os.getuid()}: " in error.message
    assert "readable by the trainer's user" in error.message


def test_an_unwritable_or_full_checkpoint_disk_is_refused(place: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", deny(place))  # the nearest existing folder of checkpoints/
    assert "checkpoints: " in failure(a_local_job(place), place).message
    monkeypatch.undo()
    full_disk = shutil.disk_usage(place)._replace(free=3 * GiB)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: full_disk)
    error = failure(a_local_job(place), place)  # full fine-tuning of 1 GiB of weights needs at least 4 GiB
    assert error.reason is ExitReason.INVALID_CONFIG and "has 3.0 GiB free" in error.message
    assert "--workdir" in error.message
    lora = a_local_job(place, method={"type": "lora"})  # at least 1 GiB: fits
    assert preflight.check(lora, paths_in(place), CPU_ONLY).spec.distributed.accelerator == "cpu"


@pytest.mark.parametrize(
    ("requested", "environment", "devices", "decided"),
    [
        ("cpu", {}, CPU_ONLY, "cpu"),
        (None, {ACCELERATOR_ENV: "cpu"}, CPU_ONLY, "cpu"),  # kubetune run chose the CPU for an unset job
        (None, {}, Devices(cuda_capabilities=(9,)), "nvidia-gpu"),
    ],
)
def test_the_checked_job_carries_the_accelerator_decided(
    place: Path,
    monkeypatch: pytest.MonkeyPatch,
    requested: str | None,
    environment: dict[str, str],
    devices: Devices,
    decided: str,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    job = a_local_job(place, distributed={"accelerator": requested, "precision": "fp32"})
    assert preflight.check(job, paths_in(place), devices).spec.distributed.accelerator == decided


def test_this_machine_is_observed_without_a_gpu() -> None:
    devices = preflight.observe_devices()
    assert devices.cuda_devices == 0 or all(major >= 3 for major in devices.cuda_capabilities)
