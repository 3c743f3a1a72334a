"""The operator runs least-privileged: the restricted Pod Security Standard, and RBAC rules that are
exactly operator/src/kubetune/operator/rbac.py's (the one source), with no wildcards and nothing on Secrets."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator.rbac import CLUSTER_RULES, LEADER_ELECTION_RULES, cluster_role_rules, role_rules
from tests.support.chart import MONITORING_APIS, SCENARIOS, of_kind, one, render

pytestmark = pytest.mark.timeout(60)

NAMESPACED = {"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}}
RBAC_KINDS = ("Role", "ClusterRole")
#: Verbs that let a subject grant itself or others more than it has.
ESCALATING_VERBS = {"escalate", "bind", "impersonate", "*"}


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all("hostPath" not in volume for volume in pod.get("volumes", []))
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert not context.get("privileged")
        assert "hostPort" not in str(container.get("ports"))


def test_all_namespaces_mode_grants_exactly_the_operators_rules() -> None:
    objects = render()
    assert one(objects, "ClusterRole")["rules"] == cluster_role_rules()
    # the only Role is leader election's, in the operator's namespace, on Leases alone
    lease_role = one(objects, "Role")
    assert lease_role["metadata"]["namespace"] == "kubetune-system"
    assert lease_role["rules"] == [rule.to_manifest() for rule in LEADER_ELECTION_RULES]
    assert one(objects, "RoleBinding")["roleRef"]["name"] == lease_role["metadata"]["name"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(objects, "ServiceAccount")["metadata"]["name"],
            "namespace": "kubetune-system",
        }
    ]


def test_namespaced_mode_grants_roles_only_in_the_listed_namespaces() -> None:
    objects = render(NAMESPACED)
    roles = [role for role in of_kind(objects, "Role") if role["metadata"]["namespace"] != "kubetune-system"]
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    assert all(role["rules"] == role_rules() for role in roles)
    # Cluster-scoped resources (CRD discovery, namespaces) still need a ClusterRole, and only those.
    assert one(objects, "ClusterRole")["rules"] == [rule.to_manifest() for rule in CLUSTER_RULES]
    bindings = of_kind(objects, "RoleBinding")
    assert sorted((b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in bindings) == [
        ("kubetune-system", "Role"),  # leader election's Lease
        ("team-a", "Role"),
        ("team-b", "Role"),
    ]
    service_account = one(objects, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": service_account["name"], "namespace": service_account["namespace"]}
        ]


def _all_rules(values: dict[str, Any], apis: tuple[str, ...]) -> list[dict[str, Any]]:
    return [rule for obj in render(values, api_versions=apis) if obj["kind"] in RBAC_KINDS for rule in obj["rules"]]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_wildcards_no_secrets_no_escalation(scenario: str) -> None:
    values, apis = SCENARIOS[scenario]
    rules = _all_rules(values, apis)
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
            assert all("*" not in item for item in rule[field]), rule
        assert not any(resource.split("/")[0] == "secrets" for resource in rule["resources"]), rule
        assert not ESCALATING_VERBS & set(rule["verbs"]), rule
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule, rule


def test_no_rule_is_granted_that_rbac_py_does_not_list() -> None:
    """Whatever the toggles, the rendered rules are drawn from rbac.py alone."""
    known = [rule.to_manifest() for rule in (*CLUSTER_RULES, *LEADER_ELECTION_RULES)] + role_rules()
    for values, apis in [({}, ()), (NAMESPACED, ()), (SCENARIOS["all-monitoring-namespaced"][0], MONITORING_APIS)]:
        assert all(rule in known for rule in _all_rules(values, apis))
