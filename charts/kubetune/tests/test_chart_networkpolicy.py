"""The chart's `networkPolicy` values reach the operator as `--gang-network-policy`: on by default, the
operator's own pod labels (whatever nameOverride says) and the extra 9400 peers, so that each attempt's
policy (kubetune.operator.network_policy) admits the chart's operator pods and nothing else. The chart
renders no NetworkPolicy of its own (one per attempt is the operator's)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator import builders
from kubetune.operator.network_policy import GangNetwork, parse_gang_network
from tests.support.builders import a_cpu_gang
from tests.support.chart import NAMESPACE, of_kind, one, render
from tests.support.selectors import selects

pytestmark = pytest.mark.timeout(60)


def flag_of(values: dict[str, Any] | None = None) -> GangNetwork | None:
    deployment = one(render(values or {}), "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = [arg for arg in args if arg.startswith("--gang-network-policy=")]
    assert len(flags) <= 1, flags
    return parse_gang_network(flags[0].partition("=")[2], NAMESPACE) if flags else None


def operator_pod_labels(values: dict[str, Any] | None = None) -> dict[str, str]:
    return one(render(values or {}), "Deployment")["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def test_on_by_default_and_no_policy_of_the_charts_own() -> None:
    assert flag_of() is not None
    assert of_kind(render(), "NetworkPolicy") == []


def test_off_makes_no_flag() -> None:
    assert flag_of({"networkPolicy": {"enabled": False}}) is None


@pytest.mark.parametrize("values", [{}, {"nameOverride": "ft"}, {"fullnameOverride": "tuner"}])
def test_the_operator_labels_select_the_charts_operator_pods_and_no_trainer(values: dict[str, Any]) -> None:
    network = flag_of(values)
    assert network is not None
    selector = {"matchLabels": dict(network.operator_labels)}
    assert selects(selector, operator_pod_labels(values))
    job = a_cpu_gang().to_job()
    worker = builders.build_worker_pod(job, 1, 0, builders.BuildSettings(trainer_image="img", gang_network=network))
    assert not selects(selector, worker["metadata"]["labels"])


def test_metrics_peers_reach_the_operator() -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    network = flag_of({"networkPolicy": {"enabled": True, "metricsFrom": [prometheus]}})
    assert network is not None and network.metrics_from == (prometheus,)


def test_the_rbac_lets_the_operator_make_them() -> None:
    rules = [rule for role in of_kind(render(), "ClusterRole") for rule in role.get("rules") or []]
    assert any(
        "networking.k8s.io" in r["apiGroups"] and "networkpolicies" in r["resources"] and "create" in r["verbs"]
        for r in rules
    ), rules
