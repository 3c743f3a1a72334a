"""A checkpoint folder belongs to its run (issue 27, "folders owned by their job"), on the real control
plane with real trainer processes: the same manifest deleted and applied again (a new uid, the same
folder) continues the earlier job's checkpoints and says whose they were; an edited one is refused,
naming each changed field, and leaves the earlier run's folder as it was.

The unit and 2-rank tests (kubetune.policies.test_folder_owner, kubetune.trainer.test_ownership) decide
and write the owner record; only here does the whole chain run as a user meets it: `kubectl apply`, a
delete whose SIGTERM checkpoints land in the folder, a new job of the same name (its pods named as the
earlier ones), the preflight's refusal turned into the job's status, and the Event posted for the new
uid while the earlier job's Events still carry the same name.

Each test trains and deletes an earlier job of its own (in its own namespace), so that each one can
fail on its own claim.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.jobs import CLAIM, JOBS, RESUMED, Inputs, Job, a_scenario, make_inputs
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.waiting import eventually

NAME = "again"
#: Steps of the run: the earlier job is deleted about 2 steps after its first checkpoint (step 8; its
#: SIGTERM checkpoint lands at step 10 here, about 10 steps a second), well before its end; the resumed
#: run finishes in seconds. 12 steps per epoch: `epochs` never ends it.
STEPS = 120
RUN = {"hyperparameters": {"maxSteps": STEPS, "epochs": 100}}
#: The edit a resume would silently ignore (the scheduler's state comes from the checkpoint).
EDITED_LEARNING_RATE = 1e-3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


@dataclass(frozen=True)
class Earlier:
    """A job that trained, checkpointed and was deleted; its folder at rest on the claim."""

    job: Job
    manifest: dict[str, Any]
    path: Path
    """The manifest as applied (YAML), to apply again."""
    uid: str
    newest: int
    """The newest checkpoint's step left in the folder (the SIGTERM one, or a periodic one after it)."""


def apply(cluster: RealCluster, namespace: str, path: Path) -> str:
    """`kubectl apply` a manifest that creates the job; the new job's uid."""
    assert "created" in cluster.kubectl_ok("apply", "-n", namespace, "-f", str(path))
    job = cluster.job(namespace, NAME)
    assert job is not None
    uid: str = job["metadata"]["uid"]
    return uid


def steps_in(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[-1]) for p in folder.glob("step-*") if p.is_dir())


def trained_and_deleted(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, namespace: str, folder: Path
) -> Earlier:
    """Apply the run's manifest, wait for a checkpoint on the claim, delete the job and wait until it and
    its pods are gone (every rank exited: nothing writes in the folder any more)."""
    manifest = a_scenario(NAME, inputs).spec(RUN).build(validate=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cluster.ensure_namespace(namespace)
    cluster.ensure_claim(namespace, CLAIM)
    job = Job(cluster, kubelet, namespace, NAME)
    uid = apply(cluster, namespace, path)
    job.wait_checkpoint(step=8, timeout=150)
    cluster.delete(JOBS, namespace, NAME)
    eventually(lambda: cluster.job(namespace, NAME) is None, 60, message=f"FineTuneJob {NAME} to be gone")
    job.wait_gone(timeout=90)
    steps = steps_in(job.storage)
    # A precondition of both tests, not their claim: the delete, not the end of training, stopped the run.
    assert steps and steps[-1] < STEPS and not (job.storage / "output").exists(), (
        f"the earlier run was not cut short by its delete (raise STEPS): {steps}\n{job.logs()}"
    )
    owner = json.loads((job.storage / "owner.json").read_text())
    assert owner["job"]["uid"] == uid, owner
    return Earlier(job, manifest, path, uid, steps[-1])


def contents(folder: Path) -> dict[str, str]:
    """Every entry below `folder` (links not followed): a file's size, mtime and SHA-256, a link's target."""
    found: dict[str, str] = {}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            if path.is_symlink():
                found[key] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "folder"
            else:
                stat = path.stat()
                found[key] = f"{stat.st_size} {stat.st_mtime_ns} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return found


@pytest.mark.timeout(360)
def test_the_same_manifest_applied_again_resumes_and_names_the_earlier_job(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, tmp_path: Path
) -> None:
    namespace = "reapplied-same"
    earlier = trained_and_deleted(cluster, kubelet, inputs, namespace, tmp_path)
    job = earlier.job
    rank0 = f"{NAME}-a1-w0"  # the new job's pod has the earlier one's name: its log is appended to the same file
    logged = len(kubelet.log(namespace, rank0))

    uid = apply(cluster, namespace, earlier.path)
    assert uid != earlier.uid
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 1 and status["restarts"] == 0, status  # adopted, not retried
    assert status["progress"]["step"] == STEPS == status["progress"]["totalSteps"], status

    adopted = job.condition("CheckpointsAdopted")
    assert adopted is not None, status
    assert (adopted["status"], adopted["reason"]) == ("True", "ResumedFromEarlierJob"), adopted
    assert f"FineTuneJob {namespace}/{NAME} (uid {earlier.uid})" in adopted["message"], adopted

    def resumed_events() -> list[dict[str, Any]]:  # this job's: the earlier job's Events carry the same name
        return [
            e
            for e in job.events()
            if e.get("reason") == "ResumedFromEarlierJob" and e["involvedObject"].get("uid") == uid
        ]

    events = eventually(resumed_events, 30, message="the ResumedFromEarlierJob Event of the new job")
    assert len(events) == 1 and events[0]["type"] == "Normal", events
    assert f"(uid {earlier.uid})" in events[0]["message"], events

    log = kubelet.log(namespace, rank0)[logged:]
    resumed = RESUMED.search(log)
    assert resumed is not None, log[-4000:]
    assert (int(resumed.group(1)), int(resumed.group(2))) == (earlier.newest, STEPS), log[-4000:]

    owner = json.loads((job.storage / "owner.json").read_text())
    assert owner["job"]["uid"] == uid and owner["adoptedFrom"]["uid"] == earlier.uid, owner
    cluster.delete(JOBS, namespace, NAME)
    job.wait_gone()


@pytest.mark.timeout(360)
def test_an_edited_manifest_applied_again_is_refused_naming_the_field_and_changes_no_file(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, tmp_path: Path
) -> None:
    namespace = "reapplied-edited"
    earlier = trained_and_deleted(cluster, kubelet, inputs, namespace, tmp_path)
    job = earlier.job
    before = contents(job.storage)
    edited = copy.deepcopy(earlier.manifest)
    learning_rate = edited["spec"]["hyperparameters"]["learningRate"]
    assert learning_rate != EDITED_LEARNING_RATE
    edited["spec"]["hyperparameters"]["learningRate"] = EDITED_LEARNING_RATE
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(edited))

    uid = apply(cluster, namespace, path)
    status = job.wait_phase("Failed", "Succeeded", timeout=120)
    assert status["phase"] == "Failed" and status["restarts"] == 0, status  # permanent: never retried
    failed = job.condition("Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec", status
    message = failed["message"]
    changed = f"spec.hyperparameters.learningRate: {json.dumps(learning_rate)} -> {json.dumps(EDITED_LEARNING_RATE)}"
    assert f"for a different run ({changed})" in message, message  # that field, and no other
    assert f"(uid {earlier.uid})" in message, message
    assert "point spec.storage.checkpoints at a new folder" in message and "step-*" in message, message
    adopted = job.condition("CheckpointsAdopted")
    assert adopted is None or adopted["status"] != "True", adopted

    job.wait_gone(timeout=60)  # every rank has exited: what the folder holds now is final
    assert contents(job.storage) == before
    owner = json.loads((job.storage / "owner.json").read_text())
    assert owner["job"]["uid"] == earlier.uid != uid, owner
    cluster.delete(JOBS, namespace, NAME)
