"""Two live jobs never write into one folder (issue 27, item 3), on the real control plane: a second job
naming the first's live checkpoint folder is refused before any pod of it exists, naming the first job,
while the first one trains on untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.jobs import CLAIM, JOBS, Inputs, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.waiting import eventually

#: A run that only stops when asked.
UNTIL_STOPPED = {"hyperparameters": {"maxSteps": 100000, "epochs": 1000}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


@pytest.mark.timeout(240)
def test_a_second_job_on_a_live_jobs_checkpoint_folder_is_refused(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "shared-folder"
    first = submit(cluster, kubelet, namespace, a_scenario("first", inputs).spec(UNTIL_STOPPED))
    first.wait_running(attempt=1, timeout=120)
    folder = cluster.job(namespace, "first")["spec"]["storage"]["checkpoints"]  # type: ignore[index]
    assert folder.startswith(f"pvc://{CLAIM}/")
    second = submit(cluster, kubelet, namespace, a_scenario("second", inputs).storage(f"{folder}/again"))
    status = second.wait_phase("Failed", "Running", "Succeeded", timeout=60)
    assert status["phase"] == "Failed", status
    failed = second.condition("Failed")
    assert failed is not None and failed["reason"] == "FolderInUse", status
    assert "FineTuneJob first" in failed["message"] and "spec.storage.checkpoints" in failed["message"], failed
    assert second.pods() == [] and "startTime" not in status
    eventually(  # posted after the status is written
        lambda: [e for e in second.events() if e.get("reason") == "FolderInUse" and e.get("type") == "Warning"],
        timeout=30,
        message="the FolderInUse Warning Event",
    )
    assert first.phase() == "Running" and len(first.pods(attempt=1)) == 2
    cluster.delete(JOBS, namespace, "first")
    first.wait_gone()
