"""Storage that cannot be shared, and time to checkpoint on SIGTERM (issue 14, items 6 and 7), on the real
control plane.

- A ReadWriteOncePod claim can be mounted by one pod only (the real scheduler enforces it), so a gang of
  two on it fails before any pod is created, naming the claim and the fix.
- A ReadWriteOnce claim may work (workers on one node, or a volume that is not attached per node, as the
  process kubelet's folders are not): the job runs, with a Warning Event and the StorageWarning condition
  naming the claim. Its pods, as the API server stored them and Pod Security "restricted" admitted them,
  carry the job's grace period (terminationGracePeriodSeconds, and torchrun's shutdown timeout 5 s
  less) and `fsGroupChangePolicy: OnRootMismatch`; suspended, they checkpoint on SIGTERM and exit
  within it.
- torchrun itself (the installed torch) waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT for its ranks after SIGTERM,
  and kills them after it: the knob the pods set is the one torch reads.
- A claim that does not exist is warned about at once; the pods wait unschedulable, as the scheduler
  makes them wait, until `schedulingTimeoutSeconds` fails the job in the scheduler's words.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.invocation import SHUTDOWN_TIMEOUT_ENV
from tests.e2e.conftest import image_environment
from tests.e2e.jobs import CLAIM, JOBS, Inputs, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


def warnings(events: list[dict[str, Any]], reason: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "Warning" and e.get("reason") == reason]


@pytest.mark.timeout(120)
def test_a_gang_on_a_read_write_once_pod_claim_fails_before_launch(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "st-rwop"
    cluster.ensure_namespace(namespace)
    cluster.ensure_claim(namespace, CLAIM, access_mode="ReadWriteOncePod")
    job = submit(cluster, kubelet, namespace, a_scenario("tiny", inputs))
    status = job.wait_phase("Failed", "Succeeded", "Running", timeout=60)
    assert status["phase"] == "Failed", status
    failed = job.condition("Failed")
    assert failed is not None and failed["reason"] == "ClaimNotShareable", status
    assert f"`{CLAIM}` is ReadWriteOncePod" in failed["message"] and "ReadWriteMany" in failed["message"], failed
    assert status.get("attempt", 0) == 0 and "startTime" not in status, status  # nothing was launched
    assert not job.pods() and not [h for h in kubelet.history if h[0] == namespace]
    assert warnings(job.events(), "ClaimNotShareable"), job.events()


#: A run that only stops when asked: no periodic checkpoint, so any checkpoint is the SIGTERM one.
UNTIL_STOPPED = {"hyperparameters": {"maxSteps": 100000, "epochs": 1000}, "checkpointing": {"everySteps": 100000}}


@pytest.mark.timeout(360)
def test_a_read_write_once_claim_warns_and_the_pods_checkpoint_within_their_grace_period(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "st-rwo-grace"
    cluster.ensure_namespace(namespace)
    cluster.ensure_claim(namespace, CLAIM, access_mode="ReadWriteOnce")
    spec = a_scenario("tiny", inputs).spec(UNTIL_STOPPED).checkpointing(grace_period_seconds=45)
    job = submit(cluster, kubelet, namespace, spec)
    pods = job.wait_running(attempt=1)  # a warning, not a refusal: the gang runs
    for pod in pods:  # as stored by the API server, admitted under Pod Security "restricted"
        pod_spec = pod["spec"]
        assert pod_spec["terminationGracePeriodSeconds"] == 45, pod_spec
        assert pod_spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch", pod_spec["securityContext"]
        env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
        assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "40", env
    (event,) = eventually(lambda: warnings(job.events(), "ClaimSingleNode"), 30, message="a ClaimSingleNode event")
    assert f"`{CLAIM}` is ReadWriteOnce" in event["message"] and "Multi-Attach" in event["message"], event
    warning = job.condition("StorageWarning")
    assert warning is not None and (warning["status"], warning["reason"]) == ("True", "ClaimSingleNode"), warning
    eventually(
        lambda: (job.status().get("progress") or {}).get("step", 0) >= 2, 180, message="training steps"
    )  # (the trainer starts in 8-23 s alone; longer while the suite loads both cores)
    # SIGTERM from the kubelet -> torchrun forwards it -> each rank checkpoints at its next step and exits
    cluster.patch(JOBS, namespace, job.name, {"spec": {"suspend": True}})
    job.wait_phase("Suspended", timeout=60)
    job.wait_gone(timeout=60)
    assert sorted(job.storage.glob("step-*")), f"no SIGTERM checkpoint\n{job.logs()}"
    rank0 = kubelet.log(namespace, "tiny-a1-w0")
    assert "received: checkpointing" in rank0 and "checkpoint saved" in rank0, rank0[-3000:]
    exits = [what for ns, _, what in kubelet.history if ns == namespace and what.startswith("exited")]
    assert exits and "exited 137" not in exits, exits  # ended by torchrun after the ranks, not SIGKILLed
    cluster.delete(JOBS, namespace, job.name)


@pytest.mark.timeout(120)
def test_a_missing_claim_is_named_at_once_and_fails_after_the_scheduling_timeout(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "st-missing"
    spec = a_scenario("tiny", inputs).storage("pvc://nowhere/tiny").retry(scheduling_timeout_seconds=10)
    job = submit(cluster, kubelet, namespace, spec)
    (event,) = eventually(lambda: warnings(job.events(), "ClaimNotFound"), 30, message="a ClaimNotFound event")
    assert "`nowhere` does not exist" in event["message"], event
    status = job.wait_phase("Failed", "Succeeded", timeout=60)
    assert status["phase"] == "Failed", status
    failed = job.condition("Failed")
    assert failed is not None and failed["reason"] == "Unschedulable", status
    assert "nowhere" in failed["message"], failed  # the scheduler's own words name the claim
    assert not [h for h in kubelet.history if h[0] == namespace and h[2] == "started"]


#: A rank that, on SIGTERM, takes SAVE_SECONDS to "checkpoint" (then writes `saved`) before it exits.
SLOW_RANK = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
(out / "ready").write_text("")
while not stop:
    time.sleep(0.05)
time.sleep(float(sys.argv[2]))
(out / "saved").write_text("")
"""
SAVE_SECONDS = 4


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("shutdown_timeout", "saved"), [(1, False), (SAVE_SECONDS + 6, True)])
def test_torchrun_waits_the_shutdown_timeout_for_its_ranks(tmp_path: Path, shutdown_timeout: int, saved: bool) -> None:
    """What the pods rely on: torchrun forwards SIGTERM to its ranks and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT
    (not its fixed default of 30 s) before it kills them."""
    script = tmp_path / "rank.py"
    script.write_text(SLOW_RANK)
    env = image_environment() | {SHUTDOWN_TIMEOUT_ENV: str(shutdown_timeout)}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    with subprocess.Popen([*argv, str(script), str(tmp_path), str(SAVE_SECONDS)], env=env) as torchrun:
        try:
            eventually(lambda: (tmp_path / "ready").exists(), 60, message="the rank to start")
            started = time.monotonic()
            torchrun.send_signal(signal.SIGTERM)
            torchrun.wait(timeout=shutdown_timeout + SAVE_SECONDS + 20)
        finally:
            if torchrun.poll() is None:
                torchrun.kill()
    waited = time.monotonic() - started
    assert (tmp_path / "saved").exists() == saved, f"waited {waited:.1f}s"
    if not saved:
        assert waited < SAVE_SECONDS, f"torchrun waited {waited:.1f}s, not {shutdown_timeout}s"
