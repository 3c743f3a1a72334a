"""Two live jobs never write into one folder: the second is refused before its first launch.

A job's gang prunes old `step-*` folders under `storage.checkpoints`, resumes from the newest one there,
and its export replaces `storage.output`. A second job naming the same folder (or one inside or above
it) would resume from the first's weights, prune its checkpoints and replace its export, while both
run. Claims are namespaced, so only jobs of the same namespace can meet; the supervisor that knows
every live job (the operator's job cache) asks this policy before a job's first launch:

- the job is refused (Failed, reason FolderInUse, naming the other job and both fields) when a live job
  of its namespace writes or reads a path that overlaps a folder this one writes, and that job launched
  already, or was created first (creationTimestamp, then uid: two jobs applied in one moment agree on which one waits);
- a job that has launched is never refused by this rule again (its folders are its own; a newcomer is
  the one refused), and a finished job is not live: its folders may be reused, as the same YAML applied
  again after a deletion reuses them (what may resume from them is the trainer's check).

Only `pvc://` folders count: a job without `storage.checkpoints` writes into an emptyDir of its own pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.paths import overlaps
from kubetune.api.status import FINISHED_PHASES, Reason


@dataclass(frozen=True)
class WrittenFolders:
    """The folders one job writes, as its spec names them (`pvc://claim/path`)."""

    name: str
    uid: str
    created: str
    """metadata.creationTimestamp (RFC 3339, so that text order is time order)."""
    launched: bool
    """The job has launched an attempt (status.attempt >= 1)."""
    folders: Mapping[str, str]
    """Field (`storage.checkpoints`, `storage.output`) -> its `pvc://` folder."""
    reads: Mapping[str, str] = field(default_factory=dict)
    """Field (`model.source`, `dataset.train`, ...) -> a `pvc://` path the job reads: another job's export
    or pruning may not land there either."""

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> WrittenFolders | None:
        """From a job as the API returns it; None when it is not live (finished or being deleted)."""
        metadata, status = job.get("metadata") or {}, job.get("status") or {}
        if status.get("phase") in FINISHED_PHASES or metadata.get("deletionTimestamp"):
            return None
        spec = job.get("spec") or {}
        return cls(
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            created=str(metadata.get("creationTimestamp", "")),
            launched=int(status.get("attempt") or 0) >= 1,
            folders=_pvc_paths(spec, WRITTEN),
            reads=_pvc_paths(spec, READ),
        )


#: The spec's paths a job writes, and those it reads, as (field, path of keys in the spec's JSON).
WRITTEN = {"storage.checkpoints": ("storage", "checkpoints"), "storage.output": ("storage", "output")}
READ = {
    "model.source": ("model", "source"),
    "dataset.train": ("dataset", "train"),
    "dataset.validation": ("dataset", "validation"),
    "dataset.test": ("dataset", "test"),
    "evaluation.referenceModel.source": ("evaluation", "referenceModel", "source"),
}


def _pvc_paths(spec: Mapping[str, Any], fields: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, keys in fields.items():
        node: Any = spec
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, str) and node.startswith("pvc://"):
            found[name] = node
    return found


def conflict(job: WrittenFolders, live: Iterable[WrittenFolders]) -> tuple[str, str] | None:
    """(reason, message) when `job` may not launch its first attempt because another live job of its
    namespace (`live`: every live job there, this one included or not) writes one of its folders and keeps
    them (it launched, or was created first); None otherwise."""
    if job.launched:
        return None
    for other in sorted(live, key=lambda o: (o.created, o.uid)):
        if other.uid == job.uid or not (other.launched or (other.created, other.uid) < (job.created, job.uid)):
            continue
        for mine, folder in job.folders.items():
            for theirs, path in {**other.folders, **other.reads}.items():
                if overlaps(folder, path):
                    return Reason.FOLDER_IN_USE, _message(mine, folder, other, theirs, path)
    return None


def _message(mine: str, folder: str, other: WrittenFolders, theirs: str, path: str) -> str:
    return (
        f"spec.{mine} {folder} overlaps spec.{theirs} {path} of FineTuneJob {other.name}, which is live: this "
        f"job would resume from, prune or replace files that job uses. Give this job a folder of its own, or "
        f"delete it and apply it again once {other.name} has finished"
    )


def live_jobs(jobs: Sequence[Mapping[str, Any]]) -> list[WrittenFolders]:
    """The live jobs among `jobs` (as the API returns them)."""
    return [found for job in jobs if (found := WrittenFolders.of(job)) is not None]
