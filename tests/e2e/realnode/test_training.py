"""Training on real pods (issue 20): the trainer image `make images` built, run by the real node's kubelet
in containers with cgroup limits, pod networking, cluster DNS and termination grace, for jobs the
in-cluster operator (from its own image, under the chart's RBAC) launches.

- A model whose weights the trainer's user may not read: the job fails at once naming the file.
- Two workers train to Succeeded: torchrun's ranks find worker 0 by its DNS name through the headless
  Service and CoreDNS, and gloo talks pod to pod across the bridge.
- A rank's process killed in its container: torchrun exits, the container ends in error, the operator
  replaces the whole gang and attempt 2 resumes from the checkpoint on the claim.
- A rank's process stopped (SIGSTOP) in its container: rank 0's hang watch names it after
  `retryPolicy.hangTimeoutSeconds`, exits Hung, and the operator restarts the gang from the checkpoint.
- A memory limit below what a rank needs: the container's cgroup OOM-kills it, the kubelet reports
  OOMKilled, and the job says so, naming `resources.limits.memory`.
- Deleting a running job: the garbage collector deletes its pods, the kubelet sends SIGTERM, and the ranks
  save a checkpoint within the grace period before they exit.

The model and data are on a claim (a hostPath volume under the node's folder, read-only in the pods); the
checkpoints on another, which the trainer's user (uid 1000) owns.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from bench.restart_real import JobWatcher, breakdown_to_first_step, breakdown_to_next_step, marks_of
from tests.e2e.jobs import MAX_STEPS, RESUMED
from tests.e2e.realnode.cluster import JOBS
from tests.e2e.realnode.jobs import TRAINER_IMAGE, UNTIL_STOPPED, Inputs, a_real_job, rank_processes
from tests.support.realnode import RealNode
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(420)


def test_two_workers_train_to_succeeded_finding_each_other_through_cluster_dns(
    submit: Any, inputs: Inputs, real_node: RealNode
) -> None:
    job = submit("rn-train", a_real_job("tiny", inputs))
    pods = eventually(lambda: job.running(1), 240, message="both workers running")
    for pod in pods:
        container = pod["status"]["containerStatuses"][0]
        assert container["image"] == TRAINER_IMAGE, container
        assert pod["spec"]["nodeName"] == "kt-node" and pod["status"]["podIP"].startswith("10.244.0.")
        # worker 0 by its name through the headless Service, which only the cluster DNS resolves
        assert "--master_addr=tiny-w0.tiny.rn-train.svc" in pod["spec"]["containers"][0]["command"]
    status = job.wait_phase("Succeeded", "Failed")
    assert status["phase"] == "Succeeded", f"{status}\n{job.logs()}"
    assert status["progress"]["step"] == MAX_STEPS, status
    assert status["attempt"] == 1 and status["restarts"] == 0, status
    assert (job.checkpoints / "tiny" / "output" / "config.json").exists()
    for pod in pods:  # DeepSpeed's comm op came compiled in the image: no rank built it
        log = job.log(pod["metadata"]["name"])
        assert "built successfully" in log and "Building extension module" not in log, log[-3000:]
    real_node.check_contained()


def test_a_killed_rank_ends_its_container_and_the_gang_resumes_from_the_checkpoint(
    submit: Any, inputs: Inputs, real_node: RealNode
) -> None:
    applied = time.time()
    job = submit("rn-kill", a_real_job("tiny", inputs))
    with JobWatcher(job.pods, lambda: job.status().get("phase"), "tiny", workers=2) as watcher:
        eventually(lambda: job.running(1), 240, message="both workers running")
        eventually(lambda: job.steps_saved(), 240, interval=0.2, message=f"a checkpoint\n{job.logs()}")
        first = marks_of(job.log("tiny-a1-w0"), 1)
        (rank,) = rank_processes(real_node, "rn-kill", "tiny-a1-w1")
        killed = time.time()
        os.kill(rank, signal.SIGKILL)
        resumed = eventually(lambda: RESUMED.search(job.log("tiny-a2-w0")), 240, message=f"attempt 2\n{job.logs()}")
        assert 8 <= int(resumed.group(1)) < MAX_STEPS, resumed.group(0)
        second = eventually(lambda: marks_of(job.log("tiny-a2-w0"), 2), 120, message="attempt 2's first step")
    # bench/restart_real.py's breakdowns of this very run: every phase seen, in order, adding up
    assert first is not None, "attempt 1's start-up marks were logged at its first step"
    start = breakdown_to_first_step(applied, watcher.seen, first)
    recovery = breakdown_to_next_step(killed, watcher.seen, second)
    for breakdown in (start, recovery):
        assert 0 < breakdown["total"] < 240 and all(s >= 0 for s in breakdown["phases"].values()), breakdown
        assert sum(breakdown["phases"].values()) == pytest.approx(breakdown["total"], abs=0.01), breakdown
    assert {"scheduling", "Python, torch, transformers, DeepSpeed imports", "model load"} <= set(start["phases"])
    assert {"failure seen, job Restarting", "old gang deleted, new pods created", "checkpoint read"} <= set(
        recovery["phases"]
    ), recovery
    status = job.wait_phase("Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["attempt"] == 2 and status["restarts"] == 1, status
    # the operator restarted the gang for the container that ended in error (torchrun's exit code)
    texts = [e.get("message", "") for e in job.admin.list("v1/events", "rn-kill")]
    assert [t for t in texts if "worker 1 exited with code 1" in t], texts


def test_a_stopped_rank_is_found_hung_and_the_gang_restarts_from_the_checkpoint(
    submit: Any, inputs: Inputs, real_node: RealNode
) -> None:
    spec = a_real_job("tiny", inputs).retry(hang_timeout_seconds=10, backoff_seconds=0)
    job = submit("rn-hang", spec.checkpointing(grace_period_seconds=10))
    eventually(lambda: job.running(1), 240, message="both workers running")
    eventually(lambda: job.steps_saved(), 240, interval=0.2, message=f"a checkpoint\n{job.logs()}")
    (rank,) = rank_processes(real_node, "rn-hang", "tiny-a1-w1")
    os.kill(rank, signal.SIGSTOP)  # alive in its container, holding its sockets, never answering again
    resumed = eventually(lambda: RESUMED.search(job.log("tiny-a2-w0")), 240, message=f"attempt 2 resumed\n{job.logs()}")
    assert 8 <= int(resumed.group(1)) < MAX_STEPS, resumed.group(0)
    status = job.wait_phase("Succeeded", "Failed")
    assert status["phase"] == "Succeeded" and status["attempt"] == 2 and status["restarts"] == 1, status
    # worker 0's rank 0 saw rank 1 stop and said so; the operator restarted the gang for it
    texts = [e.get("message", "") for e in job.admin.list("v1/events", "rn-hang")]
    assert [t for t in texts if "Hung" in t or "rank 1 stopped reporting" in t], texts


def test_a_memory_limit_below_the_ranks_need_is_oom_killed_by_the_cgroup_and_the_job_says_so(
    submit: Any, inputs: Inputs
) -> None:
    limits = {"requests": {"cpu": "400m", "memory": "400Mi"}, "limits": {"memory": "400Mi"}}
    job = submit("rn-oom", a_real_job("tiny", inputs).resources(limits).retry(max_restarts=0))
    status = job.wait_phase("Failed", "Succeeded")
    assert status["phase"] == "Failed", status
    texts = [status.get("message") or ""] + [c.get("message", "") for c in status.get("conditions") or []]
    texts += [e.get("message", "") for e in job.admin.list("v1/events", "rn-oom")]
    assert [t for t in texts if "OOMKilled" in t and "resources.limits.memory" in t], texts


def test_deleting_a_running_job_sends_sigterm_and_the_ranks_checkpoint_within_the_grace_period(
    submit: Any, inputs: Inputs
) -> None:
    spec = a_real_job("tiny", inputs).spec(UNTIL_STOPPED).checkpointing(grace_period_seconds=45)
    job = submit("rn-delete", spec)
    eventually(lambda: (job.status().get("progress") or {}).get("step", 0) >= 2, 240, message="training steps")
    assert job.steps_saved() == []
    code, body = job.admin.delete(JOBS, "rn-delete", "tiny")
    assert code < 300, body
    eventually(lambda: not job.pods(), 90, message="the job's pods gone")
    assert job.steps_saved(), "no checkpoint saved on SIGTERM"


def test_a_model_the_trainers_user_may_not_read_fails_naming_the_file(submit: Any, inputs: Inputs) -> None:
    job = submit("rn-unreadable", a_real_job("tiny", inputs).model("pvc://data/private-model"))
    status = job.wait_phase("Failed", "Succeeded")
    assert status["phase"] == "Failed", status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ModelError", failed
    assert "cannot read model.safetensors as user 1000" in failed["message"], failed
