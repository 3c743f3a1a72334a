"""Rendering the chart with Helm's own engine (helm_python), as `helm template` would, for the chart tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "kubetune"
RELEASE = "kt"
NAMESPACE = "kubetune-system"
KUBE_VERSION = "1.30.0"

#: The Prometheus Operator's kinds, as a cluster that serves them lists them in Capabilities.APIVersions.
MONITORING_APIS = (
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


@cache
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


def render_files(
    values: dict[str, Any] | None = None, *, api_versions: Sequence[str] = (), namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path -> rendered text. Raises helm_python's HelmRenderError / HelmValuesError."""
    options = {
        "name": RELEASE,
        "namespace": namespace,
        "kube_version": f"v{KUBE_VERSION}",
        "api_versions": list(api_versions),
        "is_install": True,
    }
    # Chart.render() does not pass Helm's --api-versions / --kube-version through; the library's native
    # render call (the one Chart.render makes) accepts them, so it is called directly.
    payload = _native.call_string("helm_render", chart()._raw(), json.dumps(values or {}), json.dumps(options))
    rendered: dict[str, str] = json.loads(payload)
    return rendered


def render(values: dict[str, Any] | None = None, *, api_versions: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every rendered Kubernetes object (NOTES.txt and empty documents left out)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values, api_versions=api_versions).items()):
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def of_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


ALL_MONITORING_ON: dict[str, Any] = {
    "monitoring": {
        "podMonitor": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    }
}

#: A platform policy with every key set (charts/kubetune/tests/test_chart_admission.py).
PLATFORM_POLICY: dict[str, Any] = {
    "create": True,
    "allowedImages": ["ghcr.io/acme/trainer", "registry.example.com/ml/", "sha256:abc123"],
    "allowedPriorityClasses": ["team-low", "team-high"],
    "allowedTolerationKeys": [],
    "allowedNodeSelectorKeys": ["pool"],
    "maxGangProcesses": 16,
    "maxGPUsPerJob": 8,
}

#: Named value sets: the defaults and each toggle, rendered and validated by the tests.
SCENARIOS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "defaults": ({}, ()),
    "namespaced": ({"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}}, ()),
    "crds-off": ({"crds": {"install": False}}, ()),
    "crds-not-kept": ({"crds": {"keep": False}}, ()),
    "existing-service-account": ({"serviceAccount": {"create": False, "name": "ops"}}, ()),
    "pod-monitor": ({"monitoring": {"podMonitor": {"enabled": True}}}, MONITORING_APIS),
    "service-monitor": ({"monitoring": {"serviceMonitor": {"enabled": True}}}, MONITORING_APIS),
    "prometheus-rule": ({"monitoring": {"prometheusRule": {"enabled": True}}}, MONITORING_APIS),
    "dashboard": ({"monitoring": {"dashboard": {"enabled": True}}}, ()),
    "admission-off": ({"admission": {"enabled": False}}, ()),
    "platform-policy": ({"admission": {"platformPolicy": PLATFORM_POLICY}}, ()),
    "network-policy": (
        {"networkPolicy": {"enabled": True}, "watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}},
        (),
    ),
    "all-monitoring-namespaced": (
        {**ALL_MONITORING_ON, "watch": {"allNamespaces": False, "namespaces": ["team-a"]}},
        MONITORING_APIS,
    ),
}
