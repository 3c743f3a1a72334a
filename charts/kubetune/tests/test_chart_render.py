"""The chart renders with Helm's own engine for the defaults and every toggle, lints clean, and every
object it renders is valid against the Kubernetes schemas; optional monitoring objects fail clearly
when their CRD is absent."""

from __future__ import annotations

import json
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from kubetune.api.crd import custom_resource_definition
from kubetune.monitoring.alerts import rule_groups
from kubetune.monitoring.dashboard import render_dashboard_json
from tests.support.chart import (
    CHART_DIR,
    KUBE_VERSION,
    MONITORING_APIS,
    NAMESPACE,
    SCENARIOS,
    of_kind,
    one,
    render,
    render_files,
)

pytestmark = pytest.mark.timeout(60)

#: Kinds kubernetes-validate has no schema for (the Prometheus Operator's); checked field by field below.
CUSTOM_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_is_valid_kubernetes(scenario: str) -> None:
    values, apis = SCENARIOS[scenario]
    objects = render(values, api_versions=apis)
    assert objects
    for obj in objects:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        assert obj["metadata"]["name"]


@pytest.mark.parametrize("scenario", [s for s, (_, apis) in SCENARIOS.items() if not apis])
def test_lint_is_clean(scenario: str) -> None:
    """`helm lint --strict`: no warnings, no errors (an info-level "icon is recommended" is allowed)."""
    report = helm_python.lint(CHART_DIR, SCENARIOS[scenario][0], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_defaults_render_the_operator_and_nothing_optional() -> None:
    kinds = sorted(obj["kind"] for obj in render())
    assert kinds == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"]
        + ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 2  # author access and platform
        + ["Role", "RoleBinding", "PodDisruptionBudget"]  # leader election (test_chart_leader_election.py)
    )


@pytest.mark.parametrize(
    ("toggle", "kind"),
    [("podMonitor", "PodMonitor"), ("serviceMonitor", "ServiceMonitor"), ("prometheusRule", "PrometheusRule")],
)
def test_monitoring_objects_fail_clearly_without_their_crd(toggle: str, kind: str) -> None:
    values = {"monitoring": {toggle: {"enabled": True}}}
    with pytest.raises(helm_python.HelmRenderError) as failure:
        render(values)
    message = str(failure.value)
    assert f"monitoring.{toggle}.enabled=true needs the {kind} custom resource" in message
    assert f"--api-versions monitoring.coreos.com/v1/{kind}" in message
    # Helm's lint renders in "lint mode", where `fail` only logs (so that charts needing values lint);
    # the toggled chart therefore lints clean, and only a render or install stops at the message above.
    report = helm_python.lint(CHART_DIR, values, strict=True)
    assert report["errors"] == []
    # With the CRD served, it renders.
    assert one(render(values, api_versions=MONITORING_APIS), kind)


def test_crd_is_the_generated_one_and_kept_on_uninstall() -> None:
    crd = one(render(), "CustomResourceDefinition")
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert crd == custom_resource_definition()


def test_crd_toggles() -> None:
    assert not of_kind(render({"crds": {"install": False}}), "CustomResourceDefinition")
    crd = one(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


def test_deployment_runs_two_replicas_with_liveness_and_readiness_probes() -> None:
    deployment = one(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = spec["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["args"] == [
        "operator",
        "--all-namespaces",
        "--metrics-port=8080",
        "--health-port=8081",
        "--trainer-image=ghcr.io/kubetune/trainer:0.1.0",
        "--api-writes-per-second=200",
        "--api-write-burst=400",
        "--reconcile-workers=64",
        "--progress-write-interval=15",
        "--progress-readers=16",
        "--node-outage-share=0.55",
        "--kueue=auto",
        "--leader-elect",
        "--leader-election-lease=kt-kubetune",
        "--lease-duration=10",
        "--renew-deadline=7",
        "--retry-period=2",
        '--gang-network-policy={"metricsFrom":[],"operatorLabels":{"app.kubernetes.io/component":"operator",'
        '"app.kubernetes.io/instance":"kt","app.kubernetes.io/name":"kubetune"}}',
    ]
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    assert container["resources"]["limits"]["memory"]


@pytest.mark.parametrize(("enabled", "flag"), [("auto", "--kueue=auto"), (True, "--kueue=on"), (False, "--kueue=off")])
def test_kueue_mode_reaches_the_operator(enabled: object, flag: str) -> None:
    args = one(render({"kueue": {"enabled": enabled}}), "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert [a for a in args if a.startswith("--kueue")] == [flag]


def test_namespaced_mode_passes_each_namespace() -> None:
    values = {"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}}
    args = one(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_metrics_service_targets_the_operators_metrics_port() -> None:
    objects = render()
    service = one(objects, "Service")
    pod = one(objects, "Deployment")["spec"]["template"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_pod_monitor_scrapes_rank_zero_trainers() -> None:
    monitor = one(render(SCENARIOS["pod-monitor"][0], api_versions=MONITORING_APIS), "PodMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"] == {"kubetune.io/worker-index": "0"}
    assert spec["selector"]["matchExpressions"] == [{"key": "kubetune.io/job-name", "operator": "Exists"}]
    assert spec["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
    ]
    namespaced = SCENARIOS["all-monitoring-namespaced"]
    spec = one(render(namespaced[0], api_versions=namespaced[1]), "PodMonitor")["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["team-a"]}


def test_service_monitor_selects_the_metrics_service() -> None:
    objects = render(SCENARIOS["service-monitor"][0], api_versions=MONITORING_APIS)
    monitor, service = one(objects, "ServiceMonitor"), one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


def test_prometheus_rule_carries_the_generated_alerts() -> None:
    rule = one(render(SCENARIOS["prometheus-rule"][0], api_versions=MONITORING_APIS), "PrometheusRule")
    assert rule["spec"]["groups"] == rule_groups()


def test_prometheus_rule_can_drop_and_label_alerts() -> None:
    values: dict[str, Any] = {
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "disabledAlerts": [
                    "KubetuneUnderfittingSuspected",
                    "KubetuneRestartStorm",
                    "KubetuneJobFailed",
                    "KubetuneOperatorNoLeader",
                ],
                "additionalAlertLabels": {"team": "ml"},
            }
        }
    }
    groups = one(render(values, api_versions=MONITORING_APIS), "PrometheusRule")["spec"]["groups"]
    assert [g["name"] for g in groups] == ["kubetune.training"]  # the emptied operator group is left out
    names = [r["alert"] for r in groups[0]["rules"]]
    assert "KubetuneUnderfittingSuspected" not in names and "KubetuneTrainingStalled" in names
    assert all(r["labels"]["team"] == "ml" and r["labels"]["severity"] for r in groups[0]["rules"])


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    configmap = one(render(SCENARIOS["dashboard"][0]), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["kubetune.json"]) == json.loads(render_dashboard_json())
    moved = one(render({"monitoring": {"dashboard": {"enabled": True, "namespace": "grafana"}}}), "ConfigMap")
    assert moved["metadata"]["namespace"] == "grafana"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"watch": {"allNamespaces": False}}, "/watch/namespaces"),
        ({"watch": {"allNamespaces": False, "namespaces": ["Not_A_Namespace"]}}, "/watch/namespaces/0"),
        ({"replicas": 2}, "additional properties 'replicas'"),
        ({"operator": {"metricsPort": 0}}, "/operator/metricsPort"),
        ({"monitoring": {"podMonitor": {"enabled": "yes"}}}, "/monitoring/podMonitor/enabled"),
        ({"monitoring": {"podMonitor": {"enabled": True, "interval": "often"}}}, "/monitoring/podMonitor/interval"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        # a misspelt selector would leave an empty one, which selects every namespace
        (
            {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabel": {"a": "b"}}}]}},
            "/networkPolicy/metricsFrom/0/namespaceSelector",
        ),
        ({"networkPolicy": {"metricsFrom": [{}]}}, "/networkPolicy/metricsFrom/0"),
        ({"networkPolicy": {"namespaces": ["ml"]}}, "additional properties 'namespaces'"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match="values don't meet the specifications") as failure:
        render_files(values)
    assert complaint in str(failure.value)


def test_existing_service_account_needs_a_name() -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"serviceAccount\.name is required"):
        render({"serviceAccount": {"create": False}})
    objects = render({"serviceAccount": {"create": False, "name": "ops"}})
    assert not of_kind(objects, "ServiceAccount")
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "ops"
