"""One node cut off with its processes running (issue 27, item 2): fencing between attempts, on the real
control plane, checked by the files' content.

A job's whole gang (one worker, two ranks) runs on one node. The node's processes hang (SIGSTOP: a runtime
hang, the ranks alive where they stand) and its kubelet loses the API server. The node lifecycle
controller marks the node Unknown and taints it; after `nodeLostGraceSeconds` the operator gives the
worker up (one node of two is no mass outage) and force-deletes it, which the cut-off kubelet never hears
of: its processes stay. Attempt 2 runs on the other node, claims the checkpoint folder, resumes and trains
to Succeeded. Only then do the old ranks wake: they train on to their next checkpoint, meet attempt 2's
epoch and stop there, exit 10 (Superseded), and every file in the folder (attempt 2's checkpoints, its
export, the epoch, the owner record) is byte for byte what it was before they woke.

The process kubelet gives each attempt its own ports (podexec.network_of), but a replacement pod keeps its
predecessor's loopback address, whose forwarders the cut-off pod still holds: the operator cannot read
attempt 2's rank 0 here (a real cluster gives the new pod a new IP), so attempt 2's outcome comes from its
termination message. Nothing this test asserts depends on it.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import NODES
from tests.e2e.jobs import Inputs, Job, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.waiting import eventually

#: retryPolicy.nodeLostGraceSeconds: the silent node's worker is given up this long after it goes Unknown.
GRACE_SECONDS = 10
#: Checkpoint interval (steps): the woken ranks stop at their next one.
EVERY_STEPS = 4
#: Exit code of a rank that meets a newer attempt's epoch (kubetune.api.outcome.ExitReason.SUPERSEDED).
SUPERSEDED_EXIT = 10
#: A rank's words when it finds the folder held by a newer attempt at a checkpoint (trainer fencing.py).
STOPPED_BEFORE = re.compile(r"ERROR kubetune\.trainer\.fencing: stopped before ([^:]*): .* a newer attempt runs")
#: The step a rank was about to save when it stopped ("saving step-00000012"; other writes name none).
SAVING = re.compile(r"saving step-(\d+)")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


def contents(folder: Path) -> dict[str, str]:
    """Every file under `folder`, relative path -> sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def newest_step(folder: Path) -> int:
    return max((int(p.name.removeprefix("step-")) for p in folder.glob("step-*") if p.is_dir()), default=0)


def termination_message(kubelet: ScheduledKubelet, namespace: str, pod: str) -> str:
    """What the pod's container left at its terminationMessagePath (the kubelet reports it once it can)."""
    return (kubelet.root / "pods" / namespace / pod / "rootfs" / "dev" / "termination-log").read_text()


def the_worker(job: Job, attempt: int) -> dict[str, Any] | None:
    """The attempt's one pod once its container runs."""
    pods = job.pods(attempt)
    alive = job.kubelet.running()
    return pods[0] if len(pods) == 1 and (job.namespace, pods[0]["metadata"]["name"]) in alive else None


@pytest.mark.timeout(420)
def test_a_cut_off_gang_that_wakes_after_the_next_attempt_stops_at_its_checkpoint_changing_no_file(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, silenced: list[str]
) -> None:
    namespace = "cut-off-node"
    spec = (
        a_scenario("tiny", inputs)
        .distributed(workers=1, processesPerWorker=2)
        .hyperparameters({"maxSteps": 96, "epochs": 100})
        .checkpointing(everySteps=EVERY_STEPS, keep=2)
        .retry({"maxRestarts": 2, "backoffSeconds": 0, "nodeLostGraceSeconds": GRACE_SECONDS})
    )
    job = submit(cluster, kubelet, namespace, spec)
    old = eventually(lambda: the_worker(job, 1), 90, message="attempt 1 running")
    old_name, node = old["metadata"]["name"], old["spec"]["nodeName"]
    job.wait_checkpoint(step=EVERY_STEPS * 2)

    try:
        kubelet.kill(namespace, old_name, signal.SIGSTOP)  # the runtime hangs: the ranks stop where they stand
        saved_before = newest_step(job.storage)
        silenced.append(node)
        kubelet.silence_node(node)

        status = job.wait_phase("Succeeded", "Failed", timeout=300)
        assert (status["phase"], status["attempt"]) == ("Succeeded", 2), status
        (new,) = job.pods(2)
        assert new["spec"]["nodeName"] == next(n for n in NODES if n != node), "attempt 2 ran on the other node"
        assert (namespace, old_name) in kubelet.running(), "the cut-off gang's processes are still there"
        epoch = json.loads((job.storage / "epoch.json").read_text())
        assert epoch.get("attempt") == 2, epoch
        before = contents(job.storage)
        assert any(name.startswith("output/") for name in before), sorted(before)

        kubelet.kill(namespace, old_name, signal.SIGCONT)  # the old gang wakes, still cut off
        eventually(lambda: (namespace, old_name) not in kubelet.running(), 120, message="the old gang to stop")
        log = kubelet.log(namespace, old_name)
        # both ranks stopped at their next checkpoint, Superseded (torchrun's own exit code is its, not theirs)
        exits = re.findall(r"exitcode\s*:\s*(\d+)", log)  # torchrun's words for each rank that ended in error
        assert len(exits) >= 2 and set(exits) == {str(SUPERSEDED_EXIT)}, (exits, log[-3000:])
        stops = STOPPED_BEFORE.findall(log)  # each rank at its first write after waking: within one interval
        steps = [int(match.group(1)) for what in stops if (match := SAVING.search(what))]
        assert len(stops) >= 2 and all(step <= saved_before + EVERY_STEPS for step in steps), (saved_before, stops)
        message = json.loads(termination_message(kubelet, namespace, old_name))
        assert (message["outcome"], message["reason"]) == ("Failed", "Superseded"), message
    finally:  # a failure above leaves no stopped gang behind (SIGKILL works on stopped processes)
        if (namespace, old_name) in kubelet.running():
            kubelet.kill(namespace, old_name, signal.SIGKILL)
    after = contents(job.storage)
    assert after == before, {
        "changed": sorted(k for k in before if after.get(k) not in (None, before[k])),
        "removed": sorted(set(before) - set(after)),
        "added": sorted(set(after) - set(before)),
    }
    kubelet.resume_node(node)  # the node hears of its pod's deletion now; nothing is left to stop
    eventually(lambda: not job.pods(1), 60, message="attempt 1's pod gone from the API")
