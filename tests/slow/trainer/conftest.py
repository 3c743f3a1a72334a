"""Shared, expensive setup of the trainer tests: the tiny model and one reference training run.

The reference run (prompt-completion, two ranks, 60 steps, periodic evaluation with base-model
comparison and exact match, checkpoints every 4 steps, metrics served) is started once per session;
several tests inspect its outputs, and the kill/resume test compares its own weights with it.
Its metrics endpoint is scraped after the run has written its result (the trainer lingers, serving
the final values, until it is sent SIGTERM).
"""

from __future__ import annotations

import json
import signal
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import launch, tiny
from tests.support.ports import free_port

#: The reference configuration: 160 examples / global batch 8 = 20 steps per epoch, 3 epochs.
REFERENCE_OVERRIDES: dict[str, Any] = {
    "hyperparameters": {"epochs": 3},
    "evaluation": {"everySteps": 10, "compareBaseModel": True, "exactMatch": True, "maxNewTokens": 6},
    "checkpointing": {"everySteps": 4, "keep": 2},
}


@pytest.fixture(scope="session")
def reference_manifest(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("reference-job")
    train, validation = tiny.write_dataset(folder / "data", "prompt-completion", train=160, validation=16)
    return tiny.write_manifest(folder / "job.yaml", tiny_model, train, validation, REFERENCE_OVERRIDES)


@dataclass
class ReferenceRun(launch.Finished):
    """The finished reference run plus what was scraped from it before it exited."""

    metrics_text: str = ""
    progress: dict[str, Any] | None = None


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, reference_manifest: Path) -> ReferenceRun:
    workdir = tmp_path_factory.mktemp("reference") / "run"
    port = free_port()
    argv = launch.command(reference_manifest, workdir, metrics_port=port, extra=("--metrics-linger-seconds", "120"))
    process, log = launch.start(argv, workdir, launch.environment(**launch.trace_env(workdir)))
    try:
        launch.wait_for_trainer(lambda: (workdir / "result.json").exists(), process, log)
        metrics_text = _get(f"http://127.0.0.1:{port}/metrics").decode()
        progress = json.loads(_get(f"http://127.0.0.1:{port}/progress"))
        launch.kill_group(process, signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        launch.kill_group(process)
    return ReferenceRun(workdir, process.returncode, log.read_text(), metrics_text, progress)
