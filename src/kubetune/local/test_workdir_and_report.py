"""The local runner's pure parts: path resolution, workdir ownership, the progress line, report and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ProgressSnapshot
from kubetune.api.status import Condition, EvaluationResult, EvaluationSummary, FineTuneJobStatus, Metrics, Progress
from kubetune.local.display import describe
from kubetune.local.report import plot_losses, read_jsonl, write_report
from kubetune.local.workdir import Workdir, WorkdirError, claim, resolve_paths
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(60)


def _job(train: str = "data/train.jsonl", name: str = "demo", source: str = "model") -> FineTuneJob:
    return a_job(name).model(source).train(train).to_job()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "hi"}\n')
    (tmp_path / "model").mkdir()
    return tmp_path


def test_local_paths_resolve_relative_to_the_manifest(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    job = resolve_paths(_job(), project / "job.yaml")
    assert job.spec.dataset.train == str(project / "data" / "train.jsonl")
    assert job.spec.model.source == str(project / "model")


@pytest.mark.parametrize(
    ("job", "words"),
    [
        (_job(train="data/missing.jsonl"), "spec.dataset.train: "),
        (_job(source="absent-model"), "spec.model.source: "),
        (_job(train="pvc://claim/train.jsonl"), "needs a cluster"),
    ],
)
def test_missing_or_cluster_only_paths_are_refused(project: Path, job: FineTuneJob, words: str) -> None:
    with pytest.raises(WorkdirError, match=words):
        resolve_paths(job, project / "job.yaml")


def test_a_workdir_belongs_to_one_job(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path / "run")
    assert claim(workdir, _job()) is False
    assert yaml.safe_load(workdir.manifest.read_text())["metadata"]["name"] == "demo"
    assert claim(workdir, _job()) is True  # the same job again: resume
    with pytest.raises(WorkdirError, match="different job"):
        claim(workdir, _job(name="other"))
    with pytest.raises(WorkdirError, match="different job"):
        claim(workdir, _job(train="other.jsonl"))


def test_a_workdir_has_one_job_uid_for_every_run_in_it(tmp_path: Path) -> None:
    """The trainer's fencing epoch is (uid, attempt); the attempts count on across runs in one workdir
    (status.json), so every run there must present the same uid."""
    first, again, other = Workdir(tmp_path / "run"), Workdir(tmp_path / "run"), Workdir(tmp_path / "other")
    assert first.job_uid == again.job_uid != other.job_uid
    assert first.job_uid.startswith("local-")


def test_a_foreign_non_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkdirError, match="holds no kubetune job"):
        claim(Workdir(tmp_path), _job())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_progress_line_names_every_figure() -> None:
    snapshot = ProgressSnapshot(
        progress=Progress(step=12, total_steps=40, epoch=0.6, percent=30, eta_seconds=130),
        metrics=Metrics(train_loss=1.25, eval_loss=1.1, best_eval_loss=1.05, tokens_per_second=850.0),
        updated_at=0.0,
    )
    line = describe(snapshot, attempt=2, restarts=1)
    for words in (
        "step 12/40 (30%)",
        "train loss 1.25",
        "eval loss 1.1 (best 1.05)",
        "850 tok/s",
        "ETA 2m10s",
        "restarts 1",
    ):
        assert words in line
    assert "starting" in describe(None, attempt=1, restarts=0)


def test_torn_last_line_of_a_jsonl_file_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "tra')
    assert read_jsonl(path) == [{"step": 1, "train_loss": 2.0}]


def test_report_and_plot_come_from_the_run_files(tmp_path: Path) -> None:
    workdir = Workdir(tmp_path)
    lines = [{"step": s, "train_loss": 3.0 - 0.1 * s} for s in range(1, 21)]
    lines += [{"step": s, "eval_loss": 2.5 - 0.05 * s} for s in (5, 10, 15, 20)]
    workdir.metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "restart", "attempt": 2, "step": 10}) + "\n")
    workdir.data_report.write_text("| examples | 64 |\n")
    status = FineTuneJobStatus(
        phase="Succeeded",
        restarts=1,
        attempt=2,
        conditions=[
            Condition(type="Succeeded", status="True", reason="EarlyStopped", message="eval loss stopped improving")
        ],
        metrics=Metrics(best_eval_loss=1.75, best_step=15, tokens_per_second=900.0),
        progress=Progress(step=20, total_steps=40, percent=50),
        evaluation=EvaluationSummary(
            base_model=EvaluationResult(eval_loss=3.2, exact_match=0.05, examples=40),
            fine_tuned=EvaluationResult(eval_loss=0.4, exact_match=0.9, examples=40),
        ),
    )
    plot_losses(workdir, status)
    write_report(workdir, status, wall_seconds=123.4)
    with Image.open(workdir.plot) as image:
        assert image.size == (800, 450)
    report = workdir.report.read_text()
    assert "# kubetune run: Succeeded" in report and "Restarts**: 1" in report and "123 s" in report
    assert "| base model | 3.2 |" in report and "| 5.0% |" in report and "| 90.0% |" in report
    assert "| examples | 64 |" in report
