"""Two operator replicas on the real control plane, as the chart runs them: one leads through its Lease,
the other stands by (ready, writing nothing), and takes over when the leader is killed mid-restart or
frozen past its lease; a frozen leader that wakes writes nothing more (the audit log says so) and exits.

The replicas are `kubetune operator --leader-elect` processes with the chart's flags, the token of the
chart's ServiceAccount (its Role on Leases included) and the chart's lease timings, each with its own
identity, which its requests carry in their User-Agent: the audit log tells them apart. The session's
in-process operator is stopped meanwhile (tests/e2e/test_scenarios.py's `operator_process` does the same).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.jobs import PODS, Inputs, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.chart import NAMESPACE as OPERATOR_NAMESPACE
from tests.support.chart import one, render
from tests.support.faultproxy import Fault
from tests.support.ports import free_port
from tests.support.waiting import eventually

LEASES = "coordination.k8s.io/v1/leases"
LEASE = "kubetune-e2e-failover"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def chart_operator_args() -> list[str]:
    """The chart's operator flags that matter here: the lease timings and the gang's NetworkPolicy."""
    args = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    keep = ("--lease-duration=", "--renew-deadline=", "--retry-period=", "--gang-network-policy=")
    return [arg for arg in args if arg.startswith(keep)]


def lease_duration() -> float:
    return float(next(a for a in chart_operator_args() if a.startswith("--lease-duration=")).partition("=")[2])


@dataclass
class Replica:
    identity: str
    process: subprocess.Popen[bytes]
    log: Path
    health_port: int
    metrics_port: int

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def leader_metric(self) -> float | None:
        _, text = self.get(self.metrics_port, "/metrics")
        values = [line.split()[-1] for line in text.splitlines() if line.startswith("kubetune_operator_leader ")]
        return float(values[0]) if values else None

    def tail(self) -> str:
        return f"--- {self.identity} ({self.log}) ---\n" + self.log.read_text(errors="replace")[-3000:]


class Replicas:
    """Starts operator replicas; kills every one at the end."""

    def __init__(self, cluster: RealCluster, folder: Path) -> None:
        self.cluster = cluster
        self.folder = folder
        self.kubeconfig = cluster.operator_kubeconfig(folder / "kubeconfig")
        self.started: list[Replica] = []

    def start(self, identity: str) -> Replica:
        health, metrics = free_port(), free_port()
        command = [sys.executable, "-m", "kubetune.cli", "operator", "-A", "--leader-elect",
                   f"--leader-election-lease={LEASE}", f"--leader-election-identity={identity}",
                   f"--health-port={health}", f"--metrics-port={metrics}", *chart_operator_args()]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_NAMESPACE": OPERATOR_NAMESPACE}
        log = self.folder / f"{identity}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        replica = Replica(identity, process, log, health, metrics)
        self.started.append(replica)
        eventually(lambda: _answers(replica), 60, message=f"{identity}'s probes to answer")
        return replica

    def holder(self) -> str:
        lease = self.cluster.api.get(LEASES, OPERATOR_NAMESPACE, LEASE) or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    def wait_leader(self, replica: Replica, timeout: float = 60) -> float:
        """Wait until `replica` holds the Lease; the monotonic time when it was seen to."""
        eventually(
            lambda: self.holder().startswith(f"{replica.identity}_"), timeout, message=f"{replica.identity} to lead"
        )
        return time.monotonic()

    def leader_and_standby(self, first: str, second: str) -> tuple[Replica, Replica]:
        """`first` started and leading, then `second` standing by: ready, its leader gauge 0."""
        leader = self.start(first)
        self.wait_leader(leader)
        standby = self.start(second)
        assert standby.get(standby.health_port, "/readyz")[0] == 200, "a standby is ready"
        assert (leader.leader_metric(), standby.leader_metric()) == (1.0, 0.0)
        return leader, standby

    def logs(self) -> str:
        return "\n".join(replica.tail() for replica in self.started)

    def stop(self) -> None:
        for replica in self.started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGCONT)
                replica.process.kill()
            replica.process.wait(10)
        self.cluster.api.request(
            "DELETE", f"/apis/{LEASES.split('/', 1)[0]}/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{LEASE}"
        )


def _answers(replica: Replica) -> bool:
    if replica.process.poll() is not None:
        raise AssertionError(f"{replica.identity} exited with {replica.process.returncode}\n{replica.tail()}")
    try:
        return replica.get(replica.health_port, "/healthz")[0] == 200
    except OSError:
        return False


@pytest.fixture
def replicas(cluster: RealCluster, tmp_path: Path) -> Iterator[Replicas]:
    cluster.stop_operator()
    started = Replicas(cluster, tmp_path)
    try:
        yield started
    finally:
        started.stop()
        cluster.start_operator()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


def audit_writes(cluster: RealCluster, identity: str) -> list[tuple[datetime, str, str, int]]:
    """(time received, verb, URI, HTTP code) of every write the API server received from `identity`'s process."""
    writes = []
    for line in (cluster.control_plane.folder / "logs" / "audit.log").read_text(errors="replace").splitlines():
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete" or event.get("verb") not in WRITES:
            continue
        if f"/{identity}_" in (event.get("userAgent") or ""):
            received = datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
            code = int((event.get("responseStatus") or {}).get("code") or 0)
            writes.append((received, event["verb"], event["requestURI"], code))
    return writes


def pod_uids(cluster: RealCluster, namespace: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.objects(PODS, namespace)}


def started_pods(kubelet: ScheduledKubelet, namespace: str) -> list[str]:
    return sorted(name for ns, name, what in kubelet.history if ns == namespace and what == "started")


@pytest.mark.timeout(300)
def test_the_standby_leads_within_15_s_when_the_leader_is_killed_mid_restart(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, replicas: Replicas
) -> None:
    namespace = "s28-failover-kill"
    leader, standby = replicas.leader_and_standby("replica-a", "replica-b")
    job = submit(cluster, kubelet, namespace, a_scenario("tiny", inputs))
    try:
        job.wait_running(attempt=1, timeout=120)
        # the restart stalls half-done: the old gang is gone, the new one's pods cannot be created yet
        stall = cluster.inject(Fault("CREATE", 500, 10_000, plural="pods", namespace=namespace))
        job.kill_worker(attempt=1, index=1)
        eventually(lambda: stall.served >= 2, 60, message="the leader to be mid-restart (creating attempt 2)")
        leader.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        stall.times = 0
        took_over = replicas.wait_leader(standby, timeout=30) - killed
        assert took_over <= 15.0, f"the standby led {took_over:.1f} s after the leader was killed"
        print(f"failover: the standby held the Lease {took_over:.1f} s after the leader was killed")
        eventually(lambda: standby.leader_metric() == 1.0, 10, message="the new leader's metric")
        status = job.wait_phase("Succeeded", "Failed", timeout=180)
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {job.status()}\n{replicas.logs()}") from None
    assert status["phase"] == "Succeeded" and status["attempt"] == 2 and status["restarts"] == 1, status
    assert started_pods(kubelet, namespace) == ["tiny-a1-w0", "tiny-a1-w1", "tiny-a2-w0", "tiny-a2-w1"]
    left = pod_uids(cluster, namespace)
    assert set(left) <= {"tiny-a2-w0", "tiny-a2-w1"}, f"no pod of attempt 1 is orphaned: {left}"
    assert not cluster.objects(PODS, namespace, {"kubetune.io/attempt": "3"}), "exactly one new attempt"


@pytest.mark.timeout(300)
def test_a_leader_frozen_past_its_lease_writes_nothing_after_the_takeover_and_exits(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs, replicas: Replicas
) -> None:
    namespace = "s28-failover-freeze"
    leader, standby = replicas.leader_and_standby("replica-c", "replica-d")
    job = submit(cluster, kubelet, namespace, a_scenario("tiny", inputs))
    try:
        attempt_one = {p["metadata"]["uid"] for p in job.wait_running(attempt=1, timeout=120)}
        assert audit_writes(cluster, leader.identity), "the leader's writes are in the audit log (the filter works)"
        leader.process.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        replicas.wait_leader(standby, timeout=lease_duration() + 20)
        # the takeover, on the API server's clock: the new leader's first write of the Lease
        took_over = min(
            t for t, _, uri, code in audit_writes(cluster, standby.identity) if "/leases/" in uri and code < 300
        )
        # the new leader works while the old one is frozen: a second job
        second = submit(cluster, kubelet, namespace + "-2", a_scenario("tiny", inputs))
        second.wait_running(attempt=1, timeout=120)
        assert time.monotonic() - frozen > lease_duration()
        leader.process.send_signal(signal.SIGCONT)
        code = leader.process.wait(30)
        for each in (job, second):
            status = each.wait_phase("Succeeded", "Failed", timeout=180)
            assert status["phase"] == "Succeeded" and status["attempt"] == 1 and status["restarts"] == 0, status
    except (AssertionError, subprocess.TimeoutExpired) as error:
        raise AssertionError(f"{error}\nstatus: {job.status()}\n{replicas.logs()}") from None
    assert code == 1, f"the old leader exits 1 when it finds the Lease lost\n{leader.tail()}"
    assert "lost the Lease" in leader.log.read_text(), leader.tail()
    late = [write for write in audit_writes(cluster, leader.identity) if write[0] >= took_over]
    assert late == [], f"the old leader wrote after the takeover: {late}"
    assert started_pods(kubelet, namespace) == ["tiny-a1-w0", "tiny-a1-w1"], "no pod was replaced"
    assert set(pod_uids(cluster, namespace).values()) <= attempt_one, "the pods left are the old leader's, by uid"
