"""Control-plane faults under training jobs, on a real control plane of their own (issue 28).

A production control plane is restarted under running jobs (upgrades, certificate rotation, an etcd
member replaced) and the operator must ride it out: nothing it does may depend on the API server or
etcd staying up, or on its watches never breaking. Three faults, each while jobs train:

- kube-apiserver restarted: every watch breaks and every request fails for 10-15 s;
- etcd restarted (same data folder): the API server stays up but can neither read nor write;
- a watch older than etcd's compaction: the operator is cut off (the fault proxy drops its connections)
  while a job is deleted and another created, etcd is compacted and the API server restarted, so that
  the operator's watches resume from a resourceVersion that no longer exists (410 Gone). Its watches
  come back one kind at a time, the jobs' last, as informers resuming on their own backoffs do. Its
  caches and kopf's watch must re-list, and nothing may be made from what they held before. That the
  410 happened is proven, not assumed: the proxy saw the server answer the operator's watches with it,
  and the API server's audit log shows the re-LISTs (neither the informers nor kopf list otherwise).

Each job must end Succeeded with the attempt, restart count and pods (by uid) it had before the fault:
a fault of the control plane is not a failure of the job. The kubelets and the operator are not
restarted: they must recover on their own, as they must in a cluster.

These faults would break every other test that shares the session's control plane, so this module
starts its own (tests/support/controlplane.py), with kubetune installed by its chart and the operator
behind the fault proxy (tests/e2e/realcluster.py), and its own process kubelet (tests/e2e/node.py).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubetune.operator import metrics
from tests.e2e.conftest import image_environment
from tests.e2e.jobs import JOBS, Inputs, Job, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.builders import JobBuilder
from tests.support.chart import NAMESPACE as OPERATOR_NAMESPACE
from tests.support.controlplane import ControlPlane
from tests.support.controlplane_faults import audit, compact, summary
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
#: This control plane's nodes (named apart from the session's, so that logs never mix them up).
NODES = ["fault-node-a", "fault-node-b"]
#: Steps of a job that must outlast a fault: the fault lands once it reports progress, and it trains on
#: for well over the fault's length (a restart of etcd takes about 10 s here, two jobs share two cores).
LONG_STEPS = 480
#: A watch request (path and query, as the proxy notes it) of a kind from a resourceVersion.
WATCH_FROM = re.compile(
    r"/(?P<plural>[a-z]+)\?(?=.*\bwatch=true)(?=.*\bresourceVersion=(?P<version>\d+))", re.IGNORECASE
)
#: The operator's service account: its requests in the audit log.
OPERATOR_USERS = f"system:serviceaccount:{OPERATOR_NAMESPACE}:"


# -- a control plane, a cluster and nodes of this module's own ---------------------------------------


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    own = ControlPlane(tmp_path_factory.mktemp("faulty-plane")).start(crds=ROOT / "crds")
    failed = request.session.testsfailed
    try:
        yield own
    finally:
        own.stop()
        if request.session.testsfailed > failed:
            kept = ROOT / "build" / "control-plane-faults-logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(own.folder / "logs", kept)
            print(f"\nthe faulted control plane's logs are kept in {kept}")


@pytest.fixture(scope="module")
def faulty(plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    running = RealCluster(plane, tmp_path_factory.mktemp("faulty-cluster")).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def nodes(faulty: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScheduledKubelet]:
    root = tmp_path_factory.mktemp("faulty-nodes")
    kubelet = ScheduledKubelet(faulty.api, faulty.control_plane.ca_file, root, image_environment(), NODES)
    kubelet.start()
    try:
        yield kubelet
    finally:
        kubelet.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


# -- jobs, and what a fault must leave as it was -------------------------------------------------------


def long_job(name: str, inputs: Inputs, workers: int = 2, steps: int = LONG_STEPS) -> JobBuilder:
    """A job that trains for `steps`; any restart would show (maxRestarts 2, counted in the status)."""
    return (
        a_scenario(name, inputs)
        .hyperparameters({"maxSteps": steps, "epochs": 200})
        .distributed({"workers": workers})
        .checkpointing({"everySteps": 96})
    )


def report(job: Job) -> str:
    """The job's status (if it still exists), events and pods, for a failure message."""
    status = (job.cluster.job(job.namespace, job.name) or {}).get("status", "(the job is gone)")
    events = [(e.get("type"), e.get("reason"), e.get("message")) for e in job.events()]
    pods = [(p["metadata"]["name"], p["metadata"]["uid"], (p.get("status") or {}).get("phase")) for p in job.pods()]
    return f"{job.namespace}/{job.name}\nstatus: {status}\nevents: {events}\npods: {pods}"


def training(job: Job, nodes: ScheduledKubelet, workers: int = 2) -> dict[str, Any]:
    """Wait until every worker's process runs and the job reports progress; returns what a fault must
    leave unchanged: attempt, restarts and the pods' uids."""

    def progressing() -> dict[str, Any] | None:
        status, pods = job.status(), job.pods(attempt=1)
        alive = len(pods) == workers and all((job.namespace, n) in nodes.running() for n, _ in uids(pods))
        step = (status.get("progress") or {}).get("step")
        return {"status": status, "pods": pods} if alive and status.get("phase") == "Running" and step else None

    try:
        seen = eventually(progressing, 150, interval=0.2, message=f"{job.name} to train and report progress")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{report(job)}\n{job.logs()}") from None
    status = seen["status"]
    return {"attempt": status["attempt"], "restarts": status["restarts"], "pods": uids(seen["pods"])}


def pid(plane: ControlPlane, name: str) -> int:
    process = plane.component(name).process
    assert process is not None, f"{name} is not running"
    return process.pid


def uids(pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((p["metadata"]["name"], p["metadata"]["uid"]) for p in pods)


def still_training(nodes: ScheduledKubelet, *jobs: Job) -> None:
    """The fault is over and every worker's process still runs: it landed mid-training."""
    alive = nodes.running()
    for job in jobs:
        names = [(job.namespace, name) for name, _ in uids(job.pods())]
        assert names and set(names) <= set(alive), f"the fault outlasted training: {alive}\n{report(job)}"


def assert_unharmed(job: Job, before: dict[str, Any]) -> None:
    """The job succeeded with the attempt, restart count and pods it had before the fault."""
    status = job.wait_phase("Succeeded", "Failed", timeout=180)
    after = {"attempt": status.get("attempt"), "restarts": status.get("restarts"), "pods": uids(job.pods())}
    assert status["phase"] == "Succeeded", report(job)
    assert after == before, f"before the fault: {before}\n{report(job)}"
    assert status["progress"]["step"] == status["progress"]["totalSteps"], report(job)


def listed_again(plane: ControlPlane, since: float, plural: str) -> bool:
    """Whether the operator's caches (not kopf) have listed `plural` since `since` (the audit log)."""
    lists = [e for e in audit(plane, since, OPERATOR_USERS) if e["verb"] == "list"]
    return any(e["objectRef"]["resource"] == plural and not e["userAgent"].startswith("kopf/") for e in lists)


def expired_and_relisted(plane: ControlPlane, gone: list[str], since: float, compacted: int) -> bool:
    """Whether the operator's watches of jobs and pods were answered 410 Gone (`gone`: the proxy's record),
    each from a resourceVersion below the compaction, and both its caches and kopf listed again after
    `since` (the audit log); raises AssertionError with the evidence when not yet."""
    expired = {(m["plural"], int(m["version"])) for path in gone if (m := WATCH_FROM.search(path))}
    lists = [entry for entry in audit(plane, since, OPERATOR_USERS) if entry["verb"] == "list"]
    relists = {(entry["objectRef"]["resource"], entry["userAgent"].startswith("kopf/")) for entry in lists}
    evidence = f"compacted at {compacted}; 410 Gone for {sorted(expired)}; listed again (kind, by kopf): {relists}"
    assert {plural for plural, _ in expired} >= {"finetunejobs", "pods"}, evidence
    assert all(version < compacted for _, version in expired), evidence
    assert {("finetunejobs", True), ("finetunejobs", False), ("pods", False)} <= relists, evidence
    return True


def created_pod(entry: dict[str, Any], namespace: str) -> bool:
    """Whether an audit entry is a pod created in `namespace`."""
    ref, code = entry.get("objectRef") or {}, (entry.get("responseStatus") or {}).get("code")
    return (entry["verb"], ref.get("resource"), ref.get("namespace"), code) == ("create", "pods", namespace, 201)


def in_namespace(entry: dict[str, Any], namespace: str) -> bool:
    """Whether an audit entry is about an object in `namespace` (Events apart)."""
    ref = entry.get("objectRef") or {}
    return ref.get("namespace") == namespace and ref.get("resource") != "events"


def child_of(entry: dict[str, Any], job: str) -> bool:
    """Whether an audit entry names one of the job's children (each is named after the job)."""
    name = (entry.get("objectRef") or {}).get("name") or ""
    return name == job or name.startswith(f"{job}-")


# -- the faults ------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_restarting_the_control_plane_under_training_jobs_costs_them_nothing(
    component: str, plane: ControlPlane, faulty: RealCluster, nodes: ScheduledKubelet, inputs: Inputs
) -> None:
    """kube-apiserver: every watch breaks and every request fails for a few seconds; etcd (same data): the API
    server stays up but can neither read nor write."""
    namespace = f"cp-{component.removeprefix('kube-')}-restart"
    jobs = [submit(faulty, nodes, namespace, long_job(name, inputs)) for name in ("first", "second")]
    before = [training(job, nodes) for job in jobs]
    was = pid(plane, component)
    plane.restart(component)
    assert pid(plane, component) != was
    still_training(nodes, *jobs)
    for job, then in zip(jobs, before, strict=True):
        assert_unharmed(job, then)


@pytest.mark.timeout(300)
def test_a_watch_older_than_the_compaction_re_lists_and_misses_nothing(
    plane: ControlPlane, faulty: RealCluster, nodes: ScheduledKubelet, inputs: Inputs
) -> None:
    namespace = "cp-watch-expired"
    running = submit(faulty, nodes, namespace, long_job("running", inputs, steps=2 * LONG_STEPS))
    deleted = submit(faulty, nodes, namespace, long_job("deleted", inputs, workers=1))
    before = training(running, nodes)
    training(deleted, nodes, workers=1)
    assert faulty.server is not None
    proxy = faulty.server
    started, seen = len(nodes.history), len(proxy.gone)

    # The operator is cut off; meanwhile one job is deleted and one created, etcd forgets every version
    # the operator has seen, and the API server's watch cache starts again past them.
    cut = time.time()
    proxy.partition()
    faulty.delete(JOBS, namespace, deleted.name)
    assert faulty.job(namespace, deleted.name) is None, "deleted while the operator is away"
    created = submit(faulty, nodes, namespace, a_scenario("created", inputs))
    compacted = compact(plane)
    plane.restart("kube-apiserver")
    # The operator's watches come back one kind at a time, as its informers resume each on its own backoff:
    # the jobs' last. Until then it lists its pods afresh and holds the jobs it had (its writes go through).
    proxy.partition("finetunejobs", lists_only=True)
    healed = time.time()
    eventually(lambda: listed_again(plane, healed, "pods"), 30, message="the operator to list its pods again")
    reconciled = metrics.reconciles(namespace, running.name) + 4
    eventually(lambda: metrics.reconciles(namespace, running.name) >= reconciled, 30, message="4 more reconciles")
    proxy.heal()
    still_training(nodes, running)

    # The job that trained through it all is untouched.
    assert_unharmed(running, before)

    # The operator's watches met 410 Gone from a version older than the compaction (seen on the wire), then
    # its caches and kopf listed again (the audit log: neither lists but when it starts, and after a 410).
    eventually(lambda: expired_and_relisted(plane, proxy.gone[seen:], healed, compacted), 30, message="410, re-LIST")

    # The job deleted meanwhile is forgotten, and nothing was made for it from the operator's old copy of it:
    # no create of any of its children (Service, ConfigMap, NetworkPolicy, pods), refused or not.
    eventually(lambda: not deleted.pods(), 60, message=lambda: f"the deleted job's pods to go\n{report(deleted)}")

    def forgotten() -> bool:
        return metrics.reconciles(namespace, deleted.name) == 0

    eventually(forgotten, 30, message="the operator to forget the deleted job")
    creates = [e for e in audit(plane, cut, OPERATOR_USERS) if e["verb"] == "create" and in_namespace(e, namespace)]
    made = "the operator's creates since the cut:\n" + "\n".join(summary(e) for e in creates)
    assert not [summary(e) for e in creates if child_of(e, deleted.name)], made

    # The job created meanwhile was seen and ran; the only pods started or created since the cut are its own.
    status = created.wait_phase("Succeeded", "Failed", timeout=180)
    assert (status["phase"], status["attempt"], status["restarts"]) == ("Succeeded", 1, 0), report(created)
    new = [(ns, name) for ns, name, event in nodes.history[started:] if event == "started"]
    assert sorted(new) == [(namespace, f"created-a1-w{i}") for i in (0, 1)], new
    pods = [e["objectRef"].get("name") for e in audit(plane, cut, OPERATOR_USERS) if created_pod(e, namespace)]
    assert sorted(pods) == ["created-a1-w0", "created-a1-w1"], made
    assert forgotten(), "the deleted job is reconciled again"
