"""The chart's NetworkPolicy admits exactly the operator to trainer pods on TCP 9400, and the gang's own
traffic, with selectors that match the labels the operator's builders put on pods and the labels of the
chart's own operator pods."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError

from kubetune.api.job import FineTuneJob
from kubetune.operator import builders
from tests.support.builders import a_cpu_gang
from tests.support.chart import NAMESPACE, of_kind, one, render

pytestmark = pytest.mark.timeout(60)

ON: dict[str, Any] = {"networkPolicy": {"enabled": True}}
NAMESPACED: dict[str, Any] = {**ON, "watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector's matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def worker_pod(job: FineTuneJob) -> dict[str, Any]:
    return builders.build_worker_pod(job, 1, 0, builders.BuildSettings(trainer_image="img"))


def test_off_by_default() -> None:
    assert of_kind(render(), "NetworkPolicy") == []


def test_one_policy_per_watched_namespace_selecting_every_worker_pod() -> None:
    policies = of_kind(render(NAMESPACED), "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        for job in (a_cpu_gang().to_job(), a_cpu_gang("other").to_job()):
            for index in (0, 1):
                pod = builders.build_worker_pod(job, 2, index, builders.BuildSettings(trainer_image="img"))
                assert selects(spec["podSelector"], pod["metadata"]["labels"])


def test_port_9400_from_the_operators_pods_only_and_the_gangs_own_traffic() -> None:
    objects = render(NAMESPACED)
    operator_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    policy = of_kind(objects, "NetworkPolicy")[0]
    progress, gang = policy["spec"]["ingress"]
    assert progress["ports"] == [{"protocol": "TCP", "port": builders.METRICS_PORT}]
    (peer,) = progress["from"]
    assert selects(peer["podSelector"], operator_labels)
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
    assert not selects(peer["podSelector"], worker_pod(a_cpu_gang().to_job())["metadata"]["labels"])
    # the gang: any port (rendezvous 29500, NCCL/Gloo's run-time ports), from trainer pods only
    assert "ports" not in gang
    (workers,) = gang["from"]
    assert set(workers) == {"podSelector"}
    assert selects(workers["podSelector"], worker_pod(a_cpu_gang().to_job())["metadata"]["labels"])
    assert not selects(workers["podSelector"], operator_labels)
    container_ports = {p["containerPort"] for p in worker_pod(a_cpu_gang().to_job())["spec"]["containers"][0]["ports"]}
    assert container_ports == {builders.RENDEZVOUS_PORT, builders.METRICS_PORT}


def test_trainer_selector_ignores_name_override_as_the_builders_do() -> None:
    policy = of_kind(render({**NAMESPACED, "nameOverride": "ft"}), "NetworkPolicy")[0]
    assert selects(policy["spec"]["podSelector"], worker_pod(a_cpu_gang().to_job())["metadata"]["labels"])
    operator_labels = one(render({**NAMESPACED, "nameOverride": "ft"}), "Deployment")["spec"]["template"]["metadata"]
    assert selects(policy["spec"]["ingress"][0]["from"][0]["podSelector"], operator_labels["labels"])


def test_metrics_peers_are_added_to_port_9400() -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    values = {**NAMESPACED, "networkPolicy": {"enabled": True, "metricsFrom": [prometheus]}}
    policy = of_kind(render(values), "NetworkPolicy")[0]
    assert policy["spec"]["ingress"][0]["from"][1] == prometheus


def test_all_namespaces_needs_the_namespaces_named() -> None:
    with pytest.raises(HelmRenderError, match=r"networkPolicy\.namespaces"):
        render(ON)
    values = {"networkPolicy": {"enabled": True, "namespaces": ["ml"]}}
    assert [p["metadata"]["namespace"] for p in of_kind(render(values), "NetworkPolicy")] == ["ml"]
