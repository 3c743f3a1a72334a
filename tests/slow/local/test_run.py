"""`kubetune run` end to end: real ranks (two CPU processes, DeepSpeed), real restarts and resumes.

Each test launches the command as a user would and reads only what it leaves in the workdir, checking
`status.json` against the API's own status model every time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from kubetune.api.status import FineTuneJobStatus
from tests.support import tiny
from tests.support.builders import a_job, deep_merge
from tests.support.ports import free_port
from tests.support.waiting import GiveUp, eventually

pytestmark = [pytest.mark.timeout(240)]


def kubetune_run(manifest: Path, workdir: Path, *extra: str, metrics_port: int = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "kubetune.cli", "run", str(manifest), "--workdir", str(workdir), "--plain"]
    command += ["--metrics-port", str(metrics_port), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen[str], timeout: float = 200) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def status_of(workdir: Path) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate_json((workdir / "status.json").read_text())


def events(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / "events.jsonl").read_text().splitlines()]


def wait_for_step(workdir: Path, step: int, process: subprocess.Popen[str], timeout: float = 150) -> None:
    """Until rank 0 reports at least `step` (and a checkpoint exists), or fail."""

    def reached() -> bool:
        if process.poll() is not None:
            raise GiveUp(process.communicate()[0])
        try:
            snapshot = json.loads((workdir / "progress.json").read_text())
            return bool(snapshot["progress"]["step"] >= step)
        except (OSError, ValueError, KeyError):
            return False

    eventually(reached, timeout, interval=0.3, message=f"step {step}")


def ranks_of(process: subprocess.Popen[str]) -> list[psutil.Process]:
    children = psutil.Process(process.pid).children(recursive=True)
    return [c for c in children if "kubetune.local.rank" in " ".join(c.cmdline())]


def job(tmp_path: Path, tiny_model: Path, overrides: dict[str, Any] | None = None, **data: Any) -> Path:
    train, validation = tiny.write_dataset(tmp_path / "data", "prompt-completion", **data)
    spec = deep_merge(
        {"hyperparameters": {"maxSteps": 12, "epochs": 3}, "checkpointing": {"everySteps": 4}}, overrides or {}
    )
    return tiny.write_manifest(tmp_path / "job.yaml", tiny_model, train, validation, spec)


def test_a_run_succeeds_and_leaves_every_output(tmp_path: Path, tiny_model: Path) -> None:
    manifest = job(tmp_path, tiny_model, {"evaluation": {"everySteps": 4, "compareBaseModel": True}})
    port = free_port()
    code, output = finish(kubetune_run(manifest, tmp_path / "run", metrics_port=port))
    run = tmp_path / "run"
    assert code == 0, output
    status = status_of(run)
    assert status.phase == "Succeeded" and status.restarts == 0 and status.attempt == 1
    assert status.progress and status.progress.step == 12 and status.progress.percent == 100
    assert status.evaluation and status.evaluation.base_model and status.evaluation.fine_tuned
    assert status.evaluation.fine_tuned.eval_loss < status.evaluation.base_model.eval_loss
    assert (run / "output" / "config.json").exists() and (run / "loss.png").stat().st_size > 10_000
    assert "Succeeded" in (run / "report.md").read_text() and (run / "metrics.jsonl").read_text()
    assert sorted(p.name for p in (run / "logs" / "attempt-1").glob("rank-*.log")) == ["rank-0.log", "rank-1.log"]
    assert f"Prometheus metrics (rank 0): http://127.0.0.1:{port}/metrics" in output and "step " in output
    assert "serving /metrics and /progress on port" in (run / "logs" / "attempt-1" / "rank-0.log").read_text()


def test_permanent_failure_is_not_retried_and_exits_2(tmp_path: Path, tiny_model: Path) -> None:
    manifest = job(tmp_path, tiny_model)
    train = tmp_path / "data" / "train.jsonl"
    lines = train.read_text().splitlines()
    lines[2] = '{"prompt": "Map: x", "completion": '  # line 3 is broken JSON
    train.write_text("\n".join(lines) + "\n")
    code, output = finish(kubetune_run(manifest, tmp_path / "run"))
    status = status_of(tmp_path / "run")
    assert code == 2, output
    assert status.phase == "Failed" and status.restarts == 0 and status.attempt == 1
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert failed.reason == "DataError" and f"{train}" in failed.message and "line 3" in failed.message
    assert not (tmp_path / "run" / "output").exists()


def test_a_killed_rank_restarts_the_gang_which_resumes(tmp_path: Path) -> None:
    # The model as a GGUF file: rank 0 converts it once (kubetune.trainer.gguf_cache), attempt 2 loads that
    gguf = tiny.build_tiny_gguf(tmp_path / "gguf")
    manifest = job(
        tmp_path,
        gguf.parent,
        {
            "model": {"ggufFile": gguf.name},
            "retryPolicy": {"maxRestarts": 2, "backoffSeconds": 0},
            "hyperparameters": {"maxSteps": 16},
        },
    )
    run = tmp_path / "run"
    process = kubetune_run(manifest, run)
    wait_for_step(run, 6, process)  # past the checkpoint at step 4
    ranks_of(process)[-1].send_signal(signal.SIGKILL)
    code, output = finish(process)
    assert code == 0, output
    status = status_of(run)
    assert status.phase == "Succeeded" and status.restarts == 1 and status.attempt == 2
    ended = [e for e in events(run) if e["event"] == "attempt-ended"]
    assert 137 in ended[0]["exit_codes"]
    resumed = re.search(
        r"resumed from checkpoint \S+ \(step (\d+) of", (run / "logs" / "attempt-2" / "rank-0.log").read_text()
    )
    assert resumed and int(resumed.group(1)) >= 4, "attempt 2 must resume from a checkpoint, not step 0"
    for attempt in (1, 2):
        logs = [(run / "logs" / f"attempt-{attempt}" / f"rank-{r}.log").read_text() for r in (0, 1)]
        assert "converted from tiny.gguf once for this job" in logs[0], logs[0][-2000:]
        converting = [log.count("de-quantizing GGUF tensors...: 100%") for log in logs]
        assert converting == ([1, 0] if attempt == 1 else [0, 0]), (attempt, converting)
    assert len(list((run / "checkpoints").glob("converted-gguf-*"))) == 1


def test_ctrl_c_checkpoints_and_the_same_command_resumes(tmp_path: Path, tiny_model: Path) -> None:
    manifest = job(tmp_path, tiny_model, {"hyperparameters": {"maxSteps": 16}})
    run = tmp_path / "run"
    process = kubetune_run(manifest, run)
    wait_for_step(run, 5, process)
    process.send_signal(signal.SIGINT)
    code, output = finish(process)
    assert code == 128 + signal.SIGINT, output
    status = status_of(run)
    assert status.phase == "Suspended" and any(
        p.name.startswith(("step", "checkpoint")) for p in (run / "checkpoints").iterdir()
    )
    code, output = finish(kubetune_run(manifest, run))
    assert code == 0, output
    assert "resuming FineTuneJob" in output
    status = status_of(run)
    assert status.phase == "Succeeded" and status.attempt == 2 and status.restarts == 0
    assert status.progress and status.progress.step == 16


def test_a_workdir_of_another_job_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.yaml").write_text("metadata: {name: someone-else}\nspec: {}\n")
    code, output = finish(kubetune_run(job(tmp_path, tiny_model), run))
    assert code == 2 and "belongs to a different job" in output


def test_a_bad_manifest_is_refused_before_anything_runs(tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(a_job("x").model("m").spec(dataset=None).build()))
    code, output = finish(kubetune_run(manifest, tmp_path / "run"))
    assert code == 2 and "spec.dataset: required field is missing" in output
    assert not (tmp_path / "run").exists()


def test_a_stopped_rank_is_found_hung_and_the_gang_restarts_from_the_checkpoint(
    tmp_path: Path, tiny_model: Path
) -> None:
    manifest = job(
        tmp_path,
        tiny_model,
        {
            "retryPolicy": {"maxRestarts": 2, "backoffSeconds": 0, "hangTimeoutSeconds": 10},
            "hyperparameters": {"maxSteps": 40},
        },
    )
    run = tmp_path / "run"
    process = kubetune_run(manifest, run)
    wait_for_step(run, 6, process)  # past the checkpoint at step 4
    stopped = ranks_of(process)[-1]
    stopped.send_signal(signal.SIGSTOP)  # alive, holding its sockets, never answering again
    code, output = finish(process)
    assert code == 0, output
    status = status_of(run)
    assert status.phase == "Succeeded" and status.restarts == 1 and status.attempt == 2, status
    ended = next(e for e in events(run) if e["event"] == "attempt-ended")
    assert 11 in ended["exit_codes"], ended  # rank 0 reported the hang (kubetune.api.outcome: Hung)
    restarting = [c for c in status.conditions if c.type == "Restarting"]
    hung = [e for e in events(run) if "Hung" in json.dumps(e)]
    assert hung, events(run)
    assert "rank 1 stopped reporting" in json.dumps(hung), hung
    assert not stopped.is_running() or stopped.status() == psutil.STATUS_ZOMBIE, "the stopped rank was ended"
    resumed = re.search(
        r"resumed from checkpoint \S+ \(step (\d+) of", (run / "logs" / "attempt-2" / "rank-0.log").read_text()
    )
    assert resumed and int(resumed.group(1)) >= 4, restarting
