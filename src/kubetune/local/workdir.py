"""The local runner's working directory: its layout, whom it belongs to, and the checks made before
anything is started.

A workdir belongs to one job: the resolved manifest is kept in it (`job.yaml`), and a second `kubetune
run` with the same job resumes from its checkpoints, while a different job is refused rather than mixed
in. Local paths in a manifest are relative to the manifest's own folder, so `examples/quickstart.yaml`
runs from any current directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.job import FineTuneJob


class WorkdirError(Exception):
    """Input that cannot be run: the message names the file or field at fault."""


@dataclass(frozen=True)
class Workdir:
    """Where one local job keeps everything."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "job.yaml"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.md"

    def attempt_logs(self, attempt: int) -> Path:
        return self.root / "logs" / f"attempt-{attempt}"

    @property
    def job_uid(self) -> str:
        """The local job's uid, for the trainer's fencing epoch (kubetune.trainer.fencing): one per workdir,
        as the attempts are one sequence per workdir (status.json carries the attempt across runs)."""
        return f"local-{hashlib.sha256(str(self.root).encode()).hexdigest()[:16]}"


def _is_local(path: str) -> bool:
    return "://" not in path


def resolve_paths(job: FineTuneJob, manifest_path: Path) -> FineTuneJob:
    """The job with its local model and dataset paths made absolute (relative to the manifest's folder),
    and every path checked to exist."""
    base = manifest_path.resolve().parent

    def absolute(value: str, field: str) -> str:
        if not _is_local(value):
            raise WorkdirError(f"{manifest_path}: {field}: `{value}` needs a cluster; `kubetune run` takes local paths")
        path = (base / value).resolve()
        if not path.exists():
            raise WorkdirError(f"{manifest_path}: {field}: {path} does not exist")
        return str(path)

    model = job.spec.model
    source = absolute(model.source, "spec.model.source") if not model.source.startswith("hf://") else model.source
    if model.gguf_file and not (Path(source) / model.gguf_file).is_file():
        raise WorkdirError(f"{manifest_path}: spec.model.ggufFile: {Path(source) / model.gguf_file} does not exist")
    dataset = job.spec.dataset
    validation = dataset.validation and absolute(dataset.validation, "spec.dataset.validation")
    test = dataset.test and absolute(dataset.test, "spec.dataset.test")
    files = {"train": absolute(dataset.train, "spec.dataset.train"), "validation": validation, "test": test}
    spec = job.spec.model_copy(
        update={
            "model": model.model_copy(update={"source": source}),
            "dataset": dataset.model_copy(update=files),
        }
    )
    return job.model_copy(update={"spec": spec})


def _identity(manifest: dict[str, Any]) -> str:
    """What makes two manifests the same job: name and spec, except `suspend`."""
    spec = {k: v for k, v in manifest.get("spec", {}).items() if k != "suspend"}
    return json.dumps({"name": manifest.get("metadata", {}).get("name"), "spec": spec}, sort_keys=True)


def claim(workdir: Workdir, job: FineTuneJob) -> bool:
    """Make `workdir` this job's, or confirm it already is. Returns True when it holds an earlier run of the
    same job (to resume); raises WorkdirError when it belongs to another job or is not a workdir."""
    wire = job.to_wire()
    if workdir.manifest.exists():
        earlier = yaml.safe_load(workdir.manifest.read_text())
        if _identity(earlier) != _identity(wire):
            name = earlier.get("metadata", {}).get("name")
            raise WorkdirError(
                f"{workdir.root}: belongs to a different job ({name!r}, or the same name with another spec); "
                "choose another --workdir or delete this one"
            )
        return True
    if workdir.root.exists() and any(workdir.root.iterdir()):
        raise WorkdirError(f"{workdir.root}: exists, is not empty and holds no kubetune job; choose another --workdir")
    workdir.root.mkdir(parents=True, exist_ok=True)
    temporary = workdir.manifest.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(wire, sort_keys=False))
    os.replace(temporary, workdir.manifest)
    return False
