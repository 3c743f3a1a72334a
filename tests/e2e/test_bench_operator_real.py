"""bench/operator_real.py measures what it says, on a small scale: the real operator, as a user with the
chart's ClusterRole, against the real control plane; its requests counted in the audit log. (In the e2e
tier: its 20 s would be a sixth of `make test-fast`.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import operator_real, report_operator

pytestmark = pytest.mark.timeout(240)


def test_operator_real_measures_milestones_restarts_requests_and_a_burst(tmp_path: Path) -> None:
    run = asyncio.run(operator_real.measure((3, 6), 10.0, 2.0, restarts=2, burst=3, folder=tmp_path, progress=print))
    first, second = run["milestones"]
    assert (first["jobs"], second["jobs"]) == (3, 6) and first["restarts_measured"] == 2
    for mark in (first, second):
        assert 0 < mark["create_to_pods_p50"] <= mark["create_to_pods_p99"] <= mark["create_to_pods_max"]
        assert mark["restart_p50"] > 0 and mark["peak_rss_bytes"] > 10 * 2**20
        assert {"operator", "kube-apiserver", "etcd"} <= set(mark["steady_cpu"])
        assert mark["steady_requests_per_job_minute"] >= 0
    assert run["burst"]["jobs"] == 3 and run["burst"]["create_to_pods_p99"] > 0
    audit = (tmp_path / "plane" / "logs" / "audit.log").read_text()
    assert f'"username":"{operator_real.OPERATOR_USER}"' in audit, "the operator's requests are in the audit log"
    assert "pods" in audit and "finetunejobs" in audit
    results = {"run": run, "machine_line": "this machine"}
    assert "## 3b." in report_operator.section(results) and "| watch caches | 6 |" in report_operator.section(results)
    assert "create -> all pods" in report_operator.readme_table(results)
