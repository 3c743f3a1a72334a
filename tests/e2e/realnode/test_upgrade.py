"""`helm upgrade` of the operator to a new image tag while a job trains (issue 28), on the real node: the
Deployment rolls its two replicas one at a time, the leader stopped by SIGTERM releases its Lease, a new
replica leads, and the job notices nothing: same attempt, no restart, the same pods by uid, its progress
still written.

The new tag is the same image under another name (`ctr images tag`: nothing is pulled); the upgrade is
the chart rendered with `image.tag` and applied as `helm upgrade` applies it. (Named to run last of the
real node's scenarios: the operator stays on the new tag.)
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.e2e.realnode.cluster import operator_pod, operator_pods, wait_operator
from tests.e2e.realnode.jobs import UNTIL_STOPPED, Inputs, a_real_job
from tests.support.chart import NAMESPACE, render
from tests.support.commands import run_tool
from tests.support.kubeapi import KubeApi
from tests.support.realnode import RealNode
from tests.support.waiting import eventually

#: (Alone, its time includes the real node's set-up: about 100 s.)
pytestmark = pytest.mark.timeout(600)

OLD_IMAGE = "ghcr.io/kubetune/operator:0.1.0"
NEW_TAG = "0.1.1-e2e"


def step(job: Any) -> int:
    return int((job.status().get("progress") or {}).get("step") or 0)


def rolled(admin: KubeApi, image: str) -> list[str] | None:
    """The operator pods' names once both run `image`, ready, no other pod is left, and one of them leads."""
    pods = operator_pods(admin)
    if len(pods) != 2 or any(p["metadata"].get("deletionTimestamp") for p in pods):
        return None
    # the spec's image: a container's status names the image by whichever of its tags the runtime reports
    # first, and both tags are one image here
    if not all(p["spec"]["containers"][0]["image"] == image for p in pods):
        return None
    if not all(((p["status"].get("containerStatuses") or [{}])[0]).get("ready") for p in pods):
        return None
    return [operator_pod(admin)["metadata"]["name"]] if _has_leader(admin, pods) else None


def _has_leader(admin: KubeApi, pods: list[dict[str, Any]]) -> bool:
    (lease,) = admin.list("coordination.k8s.io/v1/leases", NAMESPACE)
    holder = (lease.get("spec") or {}).get("holderIdentity") or ""
    return any(holder.startswith(p["metadata"]["name"] + "_") for p in pods)


def test_an_upgrade_of_the_operator_restarts_no_job(
    real_node: RealNode, admin: KubeApi, installed: list[dict[str, Any]], submit: Any, inputs: Inputs
) -> None:
    wait_operator(admin, installed)
    old_replicas = {p["metadata"]["name"] for p in operator_pods(admin)}
    spec = a_real_job("tiny", inputs).spec(UNTIL_STOPPED).checkpointing(grace_period_seconds=45)
    job = submit("rn-upgrade", spec)
    gang = {p["metadata"]["uid"] for p in eventually(lambda: job.running(1), 240, message="both workers running")}
    eventually(lambda: step(job) >= 2, 240, message="training steps")

    socket = str(real_node.containerd.socket)
    tagged = run_tool(
        "ctr", "--address", socket, "-n", "k8s.io", "images", "tag", OLD_IMAGE, f"ghcr.io/kubetune/operator:{NEW_TAG}"
    )
    assert tagged.returncode == 0, tagged.stderr
    upgraded = real_node.folder / "upgrade.yaml"
    upgraded.write_text(yaml.safe_dump_all(render({"image": {"tag": NEW_TAG}})))
    applied = real_node.control_plane.kubectl("apply", "-n", NAMESPACE, "-f", str(upgraded))
    assert applied.returncode == 0, applied.stderr

    new_image = f"ghcr.io/kubetune/operator:{NEW_TAG}"
    try:
        (leader,) = eventually(lambda: rolled(admin, new_image), 240, interval=0.5, message="the rollout")
        assert leader not in old_replicas, "a replica of the new version leads"
        after_rollout = step(job)
        eventually(lambda: step(job) > after_rollout, 120, message="progress written by the new leader")
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {job.status()}\n{job.logs()}") from None
    status = job.status()
    assert status["phase"] == "Running" and status["attempt"] == 1 and status["restarts"] == 0, status
    assert {p["metadata"]["uid"] for p in job.pods()} == gang, "the same two pods train on, by uid"
    assert not {p["metadata"]["name"] for p in operator_pods(admin)} & old_replicas, "every old replica is gone"
