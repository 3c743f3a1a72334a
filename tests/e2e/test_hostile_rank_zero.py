"""One team's hostile trainer image cannot stop the operator for the others (issue 26, item 3), on the real
control plane with the operator under the chart's RBAC.

The hostile job's image (images.HOSTILE_IMAGE) puts tests/support/hostile_image first on its PATH, so the
operator's `torchrun ...` starts a rank 0 that streams endless bodies, answers junk and holds connections
open. The operator refuses what it answers and says so in that job's status (ProgressUnavailable, reason
RankZeroAnswerRefused), while another team's job trains to Succeeded beside it, the operator's memory
stays small and its liveness endpoint (kopf's /healthz, which the chart's probes ask) answers throughout:
probed every second with the kubelet's default 1 s timeout, it never fails as many times in a row as the
chart's `failureThreshold`, after which a kubelet would restart the operator. The operator runs in this
test process (realcluster.py), so the resident memory sampled is the operator's plus the test's and the
kubelet's, none of which grows by itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.images import HOSTILE_IMAGE
from tests.e2e.jobs import JOBS, Inputs, a_scenario, make_inputs, submit
from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.chart import of_kind, render
from tests.support.health import LivenessProbe
from tests.support.memory import PeakMemory

#: Growth of this process's resident memory that the scenario tolerates, in MiB: one unbounded read of the
#: hostile body takes several hundred within a 2 s request (the issue measured 2.4 GiB within a minute).
RSS_GROWTH_LIMIT_MIB = 200


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("data"), tiny_model)


@pytest.mark.timeout(420)
def test_a_hostile_rank_0_is_refused_and_another_teams_job_succeeds_beside_it(
    cluster: RealCluster, kubelet: ScheduledKubelet, inputs: Inputs
) -> None:
    memory = PeakMemory(interval=0.1)
    probe = LivenessProbe(cluster.health_url, period=1.0, timeout=1.0)
    try:
        hostile = submit(
            cluster, kubelet, "hostile-a", a_scenario("hostile", inputs).workers(1).spec(image=HOSTILE_IMAGE)
        )
        said = hostile.wait_condition("ProgressUnavailable", "RankZeroAnswerRefused", timeout=120)
        assert "answered" in str(said["message"]) and "termination message" in str(said["message"])
        other = submit(cluster, kubelet, "hostile-b", a_scenario("other", inputs))
        status = other.wait_phase("Succeeded", "Failed", timeout=300)
        assert status["phase"] == "Succeeded", status
        assert hostile.phase() == "Running", hostile.status()  # still served; its outcome will come from its pod
    finally:
        grown = memory.stop()
        health = probe.stop()
    assert grown < RSS_GROWTH_LIMIT_MIB, f"resident memory grew by {grown:.0f} MiB while the hostile rank 0 ran"
    threshold = int(
        of_kind(render(), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["livenessProbe"][
            "failureThreshold"
        ]
    )
    assert health.probes >= 10, health
    assert health.longest_failure_streak < threshold, health
    cluster.delete(JOBS, "hostile-a", "hostile")
    hostile.wait_gone()
