"""What rank 0 leaves in the workdir for supervisors and people: progress, a metrics log and the result.

- `progress.json`: the latest `ProgressSnapshot`, replaced atomically at every logged step (the local
  runner reads it; in a cluster the operator polls the same JSON at `GET /progress`);
- `metrics.jsonl`: one JSON line per logged step (`"kind": "train"`) and per evaluation
  (`"kind": "eval"`), for plots and post-mortems;
- `result.json`: the `TrainerResult` (and a lasting copy beside the exported model), and its one-line
  form in Kubernetes' termination-message file when that file's folder exists (shortened to fit, see
  kubetune.trainer.handover for how the whole result reaches the operator).

Other ranks get a `Recorder` that does nothing, so the training loop needs no rank checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from kubetune.api.invocation import attempt_from_environment
from kubetune.api.outcome import EarlierJob, FitReport, ProgressSnapshot, TrainerResult
from kubetune.api.status import Metrics, Progress
from kubetune.trainer import local_results
from kubetune.trainer.handover import ResultHandover, claim_uri, result_copy


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never a mix."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


class Recorder:
    """Rank 0's files in the workdir (a no-op on other ranks)."""

    def __init__(self, workdir: Path, enabled: bool) -> None:
        self.workdir = workdir
        self.enabled = enabled
        self._lock = threading.Lock()
        self._snapshot = ProgressSnapshot(
            attempt=attempt_from_environment(),
            progress=Progress(),
            metrics=Metrics(),
            phase="Starting",
            updated_at=time.time(),
        )
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)

    def publish(
        self,
        progress: Progress | None = None,
        metrics: Metrics | None = None,
        phase: str | None = None,
        fit: list[FitReport] | None = None,
        result_ready: bool | None = None,
        resumed_from_job: EarlierJob | None = None,
    ) -> None:
        """Update the snapshot (only the given parts) and rewrite progress.json."""
        update: dict[str, Any] = {"updated_at": time.time()}
        if resumed_from_job is not None:
            update["resumed_from_job"] = resumed_from_job
        if result_ready is not None:
            update["result_ready"] = result_ready
        if fit is not None:
            update["fit"] = fit
        if progress is not None:
            update["progress"] = progress
        if metrics is not None:
            update["metrics"] = metrics
        if phase is not None:
            update["phase"] = phase
        with self._lock:
            self._snapshot = self._snapshot.model_copy(update=update)
            text = self._snapshot.model_dump_json(by_alias=True, exclude_none=True)
        if self.enabled:
            write_atomically(self.workdir / "progress.json", text + "\n")

    @property
    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            return self._snapshot

    def progress_json(self) -> bytes:
        """The snapshot as served at GET /progress."""
        return self.snapshot.model_dump_json(by_alias=True, exclude_none=True).encode()

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl."""
        if self.enabled:
            with (self.workdir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def local_results(self, attempt: int) -> Path:
        """Where the local ranks of this pod record their results (kubetune.trainer.local_results)."""
        return self.workdir / "local-results" / f"attempt-{attempt}"

    def finish(
        self,
        result: TrainerResult,
        termination_path: str | None,
        local_rank: int | None = None,
        handover: ResultHandover | None = None,
        attempt: int = 1,
    ) -> None:
        """Write result.json (rank 0: in the workdir and, to outlive the pod, beside the exported model)
        and the termination message: with `local_rank` (under torchrun), every rank of the pod records its
        result and the message carries the most telling one (kubetune.trainer.local_results: a supervisor
        that sees worker N fail first must learn why from worker N's own message, whichever of its ranks
        failed); without, rank 0 writes its own. It carries the whole result when it fits, else a
        shortened one naming the lasting copy. With `handover` (rank 0 in a cluster), the
        whole result is offered at GET /result and the snapshot says `resultReady`."""
        copy = result_copy(result, self.workdir)
        if self.enabled:
            text = result.model_dump_json(by_alias=True, indent=2) + "\n"
            write_atomically(self.workdir / "result.json", text)
            if copy != self.workdir / "result.json":
                with contextlib.suppress(OSError):  # the export folder is gone or read-only: the workdir's stays
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    write_atomically(copy, text)
            if handover is not None:
                handover.offer(result)
                self.publish(phase="Finished", result_ready=True)
        if (
            not termination_path
            or not Path(termination_path).parent.is_dir()
            or not (self.enabled or local_rank is not None)
        ):
            return
        # OSError: e.g. /dev/termination-log outside a pod, where /dev is not writable.
        with contextlib.suppress(OSError):
            if local_rank is None:
                Path(termination_path).write_text(result.termination_message(claim_uri(copy)), encoding="utf-8")
            else:
                try:
                    folder = self.local_results(attempt)
                    local_results.publish(folder, local_rank, result, Path(termination_path), claim_uri(copy))
                except OSError:  # e.g. the workdir's disk is full: this rank's own message, as before
                    Path(termination_path).write_text(result.termination_message(claim_uri(copy)), encoding="utf-8")
