"""Whether the job's PersistentVolumeClaims can be mounted by its whole gang: checked before each launch.

Every worker pod mounts every claim the job names (model, dataset, checkpoints, output). A claim's
access modes decide whether that can work, and a wrong one fails late and silently: a second pod on a
ReadWriteOncePod claim stays unschedulable while the first waits at the rendezvous for it, and a
ReadWriteOnce volume already attached to one node keeps a worker on another node in ContainerCreating
(Multi-Attach) with no error of its own. So the supervisor reads the claims (a read-only `get`) when a
new attempt is about to launch, and this policy decides:

| claim observed                                   | workers | verdict                                   |
|--------------------------------------------------|---------|-------------------------------------------|
| ReadWriteOncePod                                 | > 1     | Failed before launch: ClaimNotShareable   |
| ReadWriteOnce, without ReadWriteMany             | > 1     | launch + Warning ClaimSingleNode          |
| ReadOnlyMany only, and checkpoints/output go to it | any   | launch + Warning ClaimReadOnly            |
| not found                                        | any     | launch + Warning ClaimNotFound            |
| ReadWriteMany, or 1 worker, or not readable (403) | any    | launch                                    |

Why fail on one and only warn on the others:
- ReadWriteOncePod is enforced by Kubernetes itself (the scheduler places at most one pod per claim), so
  a gang of more than one pod can never start: failing at once says so, with the fix.
- ReadWriteOnce means one *node*: workers that land on the same node share it, and volumes whose driver
  does not attach (NFS, hostPath, local volumes, which also pin every pod to their node) work anyway.
  Failing would refuse jobs that run; the warning names the claim and the fix, and if the gang does
  hang in ContainerCreating the startup deadline (kubetune.policies.deadlines) fails it with a message
  that names Multi-Attach.
- A missing claim may be created moments after the job (`kubectl apply` of a folder, a GitOps sync in
  any order), so it must not fail the job outright. Its pods wait as Kubernetes makes them wait
  (Unschedulable: `persistentvolumeclaim "x" not found`), bounded by
  `retryPolicy.schedulingTimeoutSeconds`, whose failure message carries the scheduler's words; the
  warning names the claim at once.
- A ReadOnlyMany claim may still be writable, depending on its driver; the warning says why
  checkpoints may fail to save.

Warnings are posted as Warning Events and set as the StorageWarning condition (True, the first warning's
reason, every warning's message), so `kubectl describe` and the status both carry them; a later launch
without warnings turns it False (ClaimsUsable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kubetune.api.job import FineTuneJob, FineTuneJobSpec
from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.reconcile import Decision, refuse_launch
from kubetune.policies.status import Event, clear_condition, set_condition

RWOP = "ReadWriteOncePod"
RWO = "ReadWriteOnce"
ROX = "ReadOnlyMany"
RWX = "ReadWriteMany"


@dataclass(frozen=True)
class ClaimObservation:
    """One PersistentVolumeClaim as read from the API."""

    name: str
    access_modes: frozenset[str]
    """The modes the bound volume offers (status.accessModes), or those requested while unbound."""

    @classmethod
    def from_manifest(cls, claim: Mapping[str, Any]) -> ClaimObservation:
        """From a PersistentVolumeClaim object: the bound volume's modes win over the requested ones."""
        modes = (claim.get("status") or {}).get("accessModes") or (claim.get("spec") or {}).get("accessModes")
        return cls(name=str(claim.get("metadata", {}).get("name", "")), access_modes=frozenset(modes or ()))


@dataclass(frozen=True)
class StorageVerdict:
    """What the claims mean for the launch: fail it (`failure`), or launch with `warnings`."""

    failure: tuple[str, str] | None = None
    """(reason, message) when the gang cannot run on these claims."""
    warnings: tuple[Event, ...] = ()


def claims_of(spec: FineTuneJobSpec) -> dict[str, bool]:
    """Every claim a `pvc://claim/path` of the spec names -> whether the job writes to it (checkpoints,
    output)."""
    read = [spec.model.source, spec.dataset.train, spec.dataset.validation, spec.dataset.test]
    written = [spec.storage.checkpoints, spec.storage.output]
    found: dict[str, bool] = {}
    for value, writes in [(v, False) for v in read] + [(v, True) for v in written]:
        if value and value.startswith("pvc://"):
            claim = value.removeprefix("pvc://").partition("/")[0]
            found[claim] = found.get(claim, False) or writes
    return found


def _fix(claim: str) -> str:
    return f"use a ReadWriteMany claim for `{claim}`, or `distributed.workers: 1`"


def check_claims(spec: FineTuneJobSpec, observed: Mapping[str, ClaimObservation | None]) -> StorageVerdict:
    """The verdict for `spec`'s claims. `observed` maps a claim name to what was read: None when the API
    said it does not exist; a claim missing from the mapping could not be read and is not judged."""
    workers = spec.distributed.workers
    warnings: list[Event] = []
    for claim, writes in sorted(claims_of(spec).items()):
        if claim not in observed:
            continue
        found = observed[claim]
        if found is None:
            text = (
                f"PersistentVolumeClaim `{claim}` does not exist: the workers wait unschedulable until it is "
                "created, and the job fails after retryPolicy.schedulingTimeoutSeconds"
            )
            warnings.append(Event("Warning", Reason.CLAIM_NOT_FOUND, text))
            continue
        modes = found.access_modes
        if workers > 1 and RWOP in modes:  # the API server allows ReadWriteOncePod only on its own
            text = (
                f"PersistentVolumeClaim `{claim}` is ReadWriteOncePod: only one pod may mount it, and the gang has "
                f"{workers} worker pods; {_fix(claim)}"
            )
            return StorageVerdict(failure=(Reason.CLAIM_NOT_SHAREABLE, text))
        # Kubernetes refuses to attach a volume to a second node when its modes include ReadWriteOnce, even
        # beside ReadOnlyMany (the attach-detach controller's isMultiAttachAllowed); ReadWriteMany beside it
        # marks a volume that is not attached per node (NFS and the like).
        if workers > 1 and RWO in modes and RWX not in modes:
            text = (
                f"PersistentVolumeClaim `{claim}` is ReadWriteOnce: it can be attached to one node only, so a worker "
                f"scheduled to another node stays in ContainerCreating (Multi-Attach) until the job fails "
                f"(VolumeStillAttached, after 10 min or retryPolicy.startupTimeoutSeconds); {_fix(claim)}"
            )
            warnings.append(Event("Warning", Reason.CLAIM_SINGLE_NODE, text))
        if writes and modes == {ROX}:
            text = (
                f"PersistentVolumeClaim `{claim}` is ReadOnlyMany but checkpoints or output are written to it: saving "
                "may fail; use a ReadWriteMany (or, for one worker, ReadWriteOnce) claim"
            )
            warnings.append(Event("Warning", Reason.CLAIM_READ_ONLY, text))
    return StorageVerdict(warnings=tuple(warnings))


def apply_to_launch(
    job: FineTuneJob,
    workers: Sequence[WorkerObservation],
    launch: Decision,
    verdict: StorageVerdict,
    now: datetime,
) -> Decision:
    """The decision to carry out instead of `launch` (a decision that starts a new attempt): the job
    failed when the claims cannot hold the gang; else the launch, with the warnings as Warning Events and
    the StorageWarning condition."""
    if verdict.failure is not None:
        reason, message = verdict.failure
        return refuse_launch(job, workers, reason, message, now)
    status: FineTuneJobStatus = launch.status
    if not verdict.warnings:
        text = "every claim can be mounted by the whole gang"
        cleared = clear_condition(status, ConditionType.STORAGE_WARNING, Reason.CLAIMS_USABLE, text, now)
        return launch if cleared == status else replace(launch, status=cleared)
    message = "; ".join(w.message for w in verdict.warnings)
    reason = verdict.warnings[0].reason
    status = set_condition(status, ConditionType.STORAGE_WARNING, "True", reason, message, now)
    return replace(launch, status=status, events=launch.events + verdict.warnings)
