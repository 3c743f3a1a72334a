"""Whose checkpoints these are: resume, adopt or refuse a checkpoint folder another job may have written.

A checkpoint folder records its owner (`owner.json`: the job's name, namespace and uid, and the
fingerprint of what a resume depends on, kubetune.api.fingerprint). When a job starts on a folder, the
record decides, before any rank trains:

| the folder holds                          | fingerprint | owner           | verdict                               |
|-------------------------------------------|-------------|-----------------|---------------------------------------|
| no record, no checkpoint                  | -           | -               | FRESH: record this job                |
| no record, checkpoints (an older kubetune)| unknown     | -               | LEGACY: resume as before, warn, record|
| a record and checkpoints                  | differs     | anyone          | REFUSE, naming the fields old -> new  |
| a record, no checkpoint                   | differs     | anyone          | FRESH: nothing to continue; record    |
| a record and checkpoints                  | same        | this job        | OWN: resume (a restarted attempt)     |
| a record and checkpoints                  | same        | another job     | ADOPT: resume, and say whose (and on  |
|                                           |             |                 | each later attempt: one Event)        |
| a record, no checkpoint                   | same        | anyone          | FRESH: nothing to continue; record    |

Another job with the same fingerprint is, in practice, the same YAML applied again after a delete (a new
uid): continuing its checkpoints is what its author wants, and the status names the earlier job so that
nobody is surprised by a run that starts at step 400. The refusal is permanent (the same folder refuses
the same spec on every attempt) and names both ways out: a new `storage.checkpoints` folder, or
deleting the old one's contents. This module decides; kubetune.trainer.ownership reads and writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Final

from kubetune.api.fingerprint import FINGERPRINT_VERSION, Difference, Fingerprint
from kubetune.api.job import FineTuneJob

#: Version of the owner record's layout (not of the fingerprint, which carries its own).
OWNER_RECORD_VERSION: Final = 1
#: The field a refusal names: the folder is what the job can change to start fresh.
CHECKPOINTS_FIELD: Final = "spec.storage.checkpoints"


class OwnerRecordError(ValueError):
    """An owner record that is not one this kubetune reads (hand-edited, or from a newer layout)."""


@dataclass(frozen=True)
class Owner:
    """A job that claimed a checkpoint folder, and the fingerprint of the run it wrote there."""

    name: str
    namespace: str | None
    uid: str | None
    """metadata.uid of the FineTuneJob; `kubetune run`: its workdir's; None when run by hand."""
    fingerprint: Fingerprint
    adopted_from: Owner | None = None
    """The job whose checkpoints this one adopted in the folder (the same run, so the same fingerprint)."""

    @classmethod
    def of(cls, job: FineTuneJob, uid: str | None, fingerprint: Fingerprint) -> Owner:
        return cls(job.name, job.namespace, uid, fingerprint)

    def same_job(self, other: Owner) -> bool:
        return (self.name, self.namespace, self.uid) == (other.name, other.namespace, other.uid)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"FineTuneJob {where}{self.name} (uid {self.uid or 'unknown'})"

    def to_record(self) -> dict[str, Any]:
        """The JSON object `owner.json` holds."""
        record: dict[str, Any] = {
            "version": OWNER_RECORD_VERSION,
            "job": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
            "fingerprint": {
                "version": FINGERPRINT_VERSION,
                "digest": self.fingerprint.digest,
                "fields": self.fingerprint.fields,
            },
        }
        if (earlier := self.adopted_from) is not None:
            record["adoptedFrom"] = {"name": earlier.name, "namespace": earlier.namespace, "uid": earlier.uid}
        return record

    @classmethod
    def from_record(cls, record: Any) -> Owner:
        """The owner an `owner.json` object names; OwnerRecordError when it is not such an object."""
        try:
            if record["version"] != OWNER_RECORD_VERSION:
                raise OwnerRecordError(
                    f"record version {record['version']!r}, this kubetune reads {OWNER_RECORD_VERSION}"
                )
            job, printed, adopted = record["job"], record["fingerprint"], record.get("adoptedFrom")
            fingerprint = Fingerprint(dict(printed["fields"]), str(printed["digest"]))
            earlier = (
                cls(str(adopted["name"]), adopted.get("namespace"), adopted.get("uid"), fingerprint)
                if adopted
                else None
            )
            return cls(str(job["name"]), job.get("namespace"), job.get("uid"), fingerprint, earlier)
        except (KeyError, TypeError, AttributeError) as error:
            raise OwnerRecordError(f"not an owner record ({type(error).__name__}: {error})") from error


class Kind(Enum):
    FRESH = "fresh"
    LEGACY = "legacy"
    OWN = "own"
    ADOPT = "adopt"
    REFUSE = "refuse"


@dataclass(frozen=True)
class Verdict:
    """What a job may do with a folder, and the record to leave there (None: leave the folder's as it is)."""

    kind: Kind
    earlier: Owner | None = None
    """The folder's recorded owner, when it had one."""
    differences: tuple[Difference, ...] = ()
    record: dict[str, Any] | None = None

    @property
    def refused(self) -> bool:
        return self.kind is Kind.REFUSE

    @property
    def continues(self) -> Owner | None:
        """The earlier job whose checkpoints this job continues, to be announced: the folder's owner on an
        adoption, and again on every later attempt of the adopting job (the supervisor's condition makes
        that one Event, even when the first attempt ended before anyone read its progress)."""
        if self.kind is Kind.ADOPT:
            return self.earlier
        return self.earlier.adopted_from if self.kind is Kind.OWN and self.earlier is not None else None


def decide(recorded: Owner | None, me: Owner, has_checkpoints: bool) -> Verdict:
    """The verdict of the module's table for a job `me` on a folder that recorded `recorded`."""
    if recorded is None:
        kind = Kind.LEGACY if has_checkpoints else Kind.FRESH
        return Verdict(kind, record=me.to_record())
    differences = tuple(me.fingerprint.differences(recorded.fingerprint.fields))
    if not has_checkpoints:
        return Verdict(Kind.FRESH, recorded, differences, me.to_record())
    if differences:
        return Verdict(Kind.REFUSE, recorded, differences)
    if recorded.same_job(me):
        unchanged = recorded.fingerprint.digest == me.fingerprint.digest
        kept = replace(me, adopted_from=recorded.adopted_from)
        return Verdict(Kind.OWN, recorded, record=None if unchanged else kept.to_record())
    adopter = replace(me, adopted_from=replace(recorded, adopted_from=None))
    return Verdict(Kind.ADOPT, recorded, record=adopter.to_record())


def refusal(folder: str, verdict: Verdict) -> str:
    """The permanent error's message: whose checkpoints, which fields differ (old -> new), the ways out."""
    changed = "; ".join(str(d) for d in verdict.differences)
    return (
        f"{folder} holds checkpoints of {verdict.earlier} for a different run ({changed}): resuming them would "
        "continue that run's weights, optimizer state, schedule and data position and ignore the change. To "
        f"start fresh, point {CHECKPOINTS_FIELD} at a new folder, or delete the checkpoints in this one (its "
        "step-* folders); to continue that run, undo the change"
    )


def adoption_note(folder: str, earlier: Owner) -> str:
    """The log line (and Event) of an adoption: whose checkpoints this job continues."""
    return (
        f"resuming the checkpoints that {earlier} left in {folder}: the same model, data, method and "
        "hyperparameters (the same manifest applied again)"
    )


def legacy_note(folder: str) -> str:
    return (
        f"{folder} holds checkpoints but no owner record (written by a kubetune from before owner records): "
        "resuming them as before, unchecked against this job's spec; this job is recorded as their owner now"
    )
