"""Two live jobs never write into one folder: the second is refused before its first launch.

A job's gang prunes old `step-*` folders under `storage.checkpoints`, resumes from the newest one there,
and its export replaces `storage.output`. A second job naming the same folder (or one inside or above
it) would resume from the first's weights, prune its checkpoints and replace its export, while both
run. Claims are namespaced, so only jobs of the same namespace can meet; the supervisor that knows
every live job (the operator's job cache) asks this policy before a job's first launch:

- the job is refused (Failed, reason FolderInUse, naming the other job and both fields) when a live job
  of its namespace writes a folder that overlaps one it writes, and that job launched already, or was
  created first (creationTimestamp, then uid: two jobs applied in one moment agree on which one waits);
- a job that has launched is never refused by this rule again (its folders are its own; a newcomer is
  the one refused), and a finished job is not live: its folders may be reused, as the same YAML applied
  again after a deletion reuses them (what may resume from them is the trainer's check).

Only `pvc://` folders count: a job without `storage.checkpoints` writes into an emptyDir of its own pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> WrittenFolders | None:
        """From a job as the API returns it; None when it is not live (finished or being deleted)."""
        metadata, status = job.get("metadata") or {}, job.get("status") or {}
        if status.get("phase") in FINISHED_PHASES or metadata.get("deletionTimestamp"):
            return None
        storage = (job.get("spec") or {}).get("storage") or {}
        folders = {
            f"storage.{key}": value
            for key in ("checkpoints", "output")
            if isinstance(value := storage.get(key), str) and value.startswith("pvc://")
        }
        return cls(
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
            created=str(metadata.get("creationTimestamp", "")),
            launched=int(status.get("attempt") or 0) >= 1,
            folders=folders,
        )


def conflict(job: WrittenFolders, live: Iterable[WrittenFolders]) -> tuple[str, str] | None:
    """(reason, message) when `job` may not launch its first attempt because another live job of its
    namespace (`live`: every live job there, this one included or not) writes one of its folders and keeps
    them (it launched, or was created first); None otherwise."""
    if job.launched:
        return None
    for other in sorted(live, key=lambda o: (o.created, o.uid)):
        if other.uid == job.uid or not (other.launched or (other.created, other.uid) < (job.created, job.uid)):
            continue
        for field, folder in job.folders.items():
            for other_field, other_folder in other.folders.items():
                if overlaps(folder, other_folder):
                    return Reason.FOLDER_IN_USE, _message(field, folder, other, other_field, other_folder)
    return None


def _message(field: str, folder: str, other: WrittenFolders, other_field: str, other_folder: str) -> str:
    return (
        f"spec.{field} {folder} overlaps spec.{other_field} {other_folder} of FineTuneJob {other.name}, which "
        f"is live: two jobs in one folder would resume from, prune and replace each other's files. Give this "
        f"job a folder of its own, or delete it and apply it again once {other.name} has finished"
    )


def live_jobs(jobs: Sequence[Mapping[str, Any]]) -> list[WrittenFolders]:
    """The live jobs among `jobs` (as the API returns them)."""
    return [found for job in jobs if (found := WrittenFolders.of(job)) is not None]
