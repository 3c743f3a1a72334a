"""The Kubernetes permissions the operator needs, written once as data.

The Helm chart renders its (Cluster)Role from these rules and a test compares the two, so the chart
can never grant less than the operator uses, nor more. Everything here is the least the operator and
kopf need: no wildcards, and no Secrets at all (a job's `tokenSecretRef` only becomes a `secretKeyRef`
in a pod spec; the kubelet, not the operator, reads the Secret).

Three sets: `NAMESPACED_RULES` are needed in every namespace whose jobs the operator runs (a Role per
namespace with `--namespace`, or the ClusterRole with `--all-namespaces`); `CLUSTER_RULES` name
cluster-scoped resources and always need a ClusterRole; `LEADER_ELECTION_RULES` are granted by a Role in
the operator's own namespace only (its Lease).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PolicyRule:
    """One rule of a Role or ClusterRole (`rbac.authorization.k8s.io/v1` PolicyRule)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    """Why the operator needs it (becomes a comment in the chart)."""

    def to_manifest(self) -> dict[str, Any]:
        """The rule as it is written in a Role: {apiGroups, resources, verbs}."""
        return {"apiGroups": list(self.api_groups), "resources": list(self.resources), "verbs": list(self.verbs)}


NAMESPACED_RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        ("kubetune.io",),
        ("finetunejobs",),
        ("get", "list", "watch", "patch", "delete"),
        "watch jobs (kopf); kopf removes the finalizer earlier versions set; ttlSecondsAfterFinished deletes the job",
    ),
    PolicyRule(("kubetune.io",), ("finetunejobs/status",), ("get", "patch"), "write the observed status"),
    PolicyRule(
        ("kubetune.io",),
        ("finetunejobs/finalizers",),
        ("update",),
        "children set blockOwnerDeletion on their job: the OwnerReferencesPermissionEnforcement admission plugin "
        "refuses every child create without it",
    ),
    PolicyRule(
        ("",),
        ("pods",),
        ("get", "list", "watch", "create", "delete"),
        "create, observe and delete the gang of worker pods",
    ),
    PolicyRule(("",), ("services",), ("get", "list", "watch", "create", "delete"), "the gang's headless Service"),
    PolicyRule(
        ("networking.k8s.io",),
        ("networkpolicies",),
        ("get", "create", "delete"),
        "each attempt's NetworkPolicy (--gang-network-policy): only the attempt's own pods and the operator reach "
        "its ports; get/delete: one left by a deleted job of the same name",
    ),
    PolicyRule(
        ("",), ("configmaps",), ("get", "list", "watch", "create", "delete"), "the rendered trainer configuration"
    ),
    PolicyRule(
        ("",),
        ("events",),
        ("create", "patch", "list"),
        "Kubernetes Events for every transition (kopf posts v1 Events); list: the attach failures (Multi-Attach) "
        "of a worker stuck in ContainerCreating, which wait longer than startupTimeoutSeconds",
    ),
    PolicyRule(
        ("",),
        ("resourcequotas",),
        ("get", "list", "watch"),
        "read-only: a gang is created only when all of it fits the namespace's quotas, and retried when they change",
    ),
    PolicyRule(
        ("",),
        ("persistentvolumeclaims",),
        ("get",),
        "read-only: before each launch, whether the job's claims can be mounted by the whole gang (access modes)",
    ),
    PolicyRule(
        ("kueue.x-k8s.io",),
        ("workloads",),
        ("get", "list", "watch", "create"),
        "Kueue (--kueue): one Workload per queued job, no pod before Kueue admits it; its changes wake the job",
    ),
    PolicyRule(
        ("kueue.x-k8s.io",),
        ("workloads/status",),
        ("patch",),
        "Kueue (--kueue): give an evicted Workload's quota back once its gang is gone; mark it Finished",
    ),
)

CLUSTER_RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("get", "list", "watch"),
        "kopf discovers the FineTuneJob CRD and waits for it before watching",
    ),
    PolicyRule(("",), ("namespaces",), ("get", "list", "watch"), "kopf follows namespaces it may serve"),
    PolicyRule(
        ("",),
        ("nodes",),
        ("get", "list", "watch"),
        "read-only: a worker whose node stopped reporting is force-deleted after retryPolicy.nodeLostGraceSeconds, "
        "unless most nodes stopped at once (the brake on mass node loss counts every node's Ready condition)",
    ),
    PolicyRule(
        ("kueue.x-k8s.io",),
        ("resourceflavors",),
        ("get", "list", "watch"),
        "read-only, Kueue (--kueue): the admitted flavors' node labels and tolerations, for the worker pods",
    ),
    PolicyRule(
        ("scheduling.k8s.io",),
        ("priorityclasses",),
        ("get",),
        "read-only, Kueue (--kueue): a queued job's priority (its PriorityClass's value) on its Workload",
    ),
)

#: In the operator's own namespace only (a Role there), when replicas elect a leader (`--leader-elect`).
LEADER_ELECTION_RULES: tuple[PolicyRule, ...] = (
    PolicyRule(
        ("coordination.k8s.io",),
        ("leases",),
        ("get", "create", "update"),
        "leader election: the replicas read, create and renew the Lease that says which one reconciles",
    ),
)

ALL_RULES: tuple[PolicyRule, ...] = NAMESPACED_RULES + CLUSTER_RULES + LEADER_ELECTION_RULES


def cluster_role_rules() -> list[dict[str, Any]]:
    """The rules of the operator's ClusterRole when it watches all namespaces."""
    return [rule.to_manifest() for rule in NAMESPACED_RULES + CLUSTER_RULES]


def role_rules() -> list[dict[str, Any]]:
    """The rules of the per-namespace Role when it watches named namespaces (CLUSTER_RULES still need a
    ClusterRole)."""
    return [rule.to_manifest() for rule in NAMESPACED_RULES]
