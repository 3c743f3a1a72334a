"""The checkpoint folder's owner record (`owner.json`): read by every rank's preflight, written by rank 0.

Resume takes the newest `step-*` of the folder, whoever wrote it. So that a job never silently continues
another run (another job's, or its own manifest edited and applied again), the folder records its owner
and the fingerprint of what a resume depends on; kubetune.policies.folder_owner decides what a job may
do with it. Two moments:

- `problems` (every rank, in kubetune.trainer.preflight, before it joins the gang or loads anything):
  a folder holding checkpoints of a different run is refused, a permanent InvalidConfig naming the
  fields that differ (old -> new) and how to start fresh;
- `claim` (rank 0, after the gang formed, so after every rank's preflight read the record, and before
  the first step): records this job as the owner, atomically (temporary file, fsync, rename), and
  returns the earlier job when this one continues its checkpoints (the same manifest applied again),
  for the log, the progress snapshot and the result: the operator turns it into a Normal Event.

A folder with checkpoints and no record (written before records existed) is resumed as before, with a
warning, and recorded. Only a folder rank 0 sees is recorded: without `storage.checkpoints` each pod
writes its own scratch folder, which no other job can name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Final

from kubetune.api.fingerprint import fingerprint
from kubetune.api.invocation import job_uid_from_environment
from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import EarlierJob
from kubetune.policies.folder_owner import (
    CHECKPOINTS_FIELD,
    Kind,
    Owner,
    OwnerRecordError,
    Verdict,
    adoption_note,
    decide,
    legacy_note,
    refusal,
)
from kubetune.policies.preflight import Problem
from kubetune.trainer.checkpoint import published
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.integrity import write_text_atomically

log = logging.getLogger(__name__)

#: The owner record's name in the checkpoint folder (beside the `step-*` folders, `latest` and `best`).
OWNER_FILE: Final = "owner.json"


def this_job(job: FineTuneJob, uid: str | None = None) -> Owner:
    """The owner this run would record: the job, its uid (KUBETUNE_JOB_UID unless given) and fingerprint."""
    return Owner.of(job, uid if uid is not None else job_uid_from_environment(), fingerprint(job.spec))


def read_owner(folder: Path) -> Owner | None:
    """The folder's recorded owner; None when there is no record. ConfigError (permanent) when the record
    is not one this kubetune reads: it cannot say whose checkpoints these are, and guessing could mix runs."""
    path = folder / OWNER_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Owner.from_record(json.loads(text))
    except (ValueError, OwnerRecordError) as error:
        raise ConfigError(
            f"{CHECKPOINTS_FIELD}: {path} is not a kubetune owner record ({error}); delete it to resume the "
            "checkpoints beside it as they are, or point the field at a new folder to start fresh",
            retryable=False,
        ) from error


def verdict(job: FineTuneJob, folder: Path, uid: str | None = None) -> Verdict:
    """What this job may do with `folder` (kubetune.policies.folder_owner.decide)."""
    return decide(read_owner(folder), this_job(job, uid), bool(published(folder)))


def problems(job: FineTuneJob, folder: Path) -> list[Problem]:
    """The preflight's view: the refusal, if the folder holds checkpoints of a different run."""
    judged = verdict(job, folder)
    return [Problem(CHECKPOINTS_FIELD, refusal(str(folder), judged))] if judged.refused else []


def claim(job: FineTuneJob, folder: Path, is_main: bool, uid: str | None = None) -> EarlierJob | None:
    """Rank 0 records this job as the folder's owner; the earlier job whose checkpoints it continues, if
    any. Other ranks do nothing (None). ConfigError if the folder became another run's since the preflight."""
    if not is_main:
        return None
    judged = verdict(job, folder, uid)
    if judged.refused:
        raise ConfigError(f"{CHECKPOINTS_FIELD}: {refusal(str(folder), judged)}", retryable=False)
    if judged.kind is Kind.LEGACY:
        log.warning("%s", legacy_note(str(folder)))
    elif judged.kind is Kind.FRESH and judged.earlier is not None:
        log.info(
            "%s: no checkpoint of %s is left; this job starts fresh and owns the folder now", folder, judged.earlier
        )
    if judged.record is not None:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomically(folder / OWNER_FILE, json.dumps(judged.record, indent=2, sort_keys=True) + "\n")
    earlier = judged.continues
    if earlier is None:
        return None
    if judged.kind is Kind.ADOPT:
        log.warning("%s", adoption_note(str(folder), earlier))
    return EarlierJob(name=earlier.name, namespace=earlier.namespace, uid=earlier.uid, checkpoints=str(folder))
