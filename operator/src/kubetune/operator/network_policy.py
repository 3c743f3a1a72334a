"""The NetworkPolicy of one gang attempt: who may open a connection to a trainer pod.

A trainer pod listens on ports that must not be open to the cluster: torch's rendezvous store (29500,
no authentication: whoever reaches it can join or stall the gang), Gloo/NCCL's data connections (ports
chosen at run time) and rank 0's endpoints (9400: progress, metrics and the result; the state-changing
ones also need the attempt's token). A static policy of the chart could only admit "any trainer pod",
so the operator makes one policy per attempt, created before that attempt's pods, owned by the job
(deleted with it), selecting exactly that attempt's pods and admitting:

- every port from the pods of the same job's same attempt (the gang's own traffic);
- TCP 9400 from the operator's pods (its namespace and pod labels, which the chart passes) and from the
  platform's extra peers (`metricsFrom`, e.g. a Prometheus that scrapes trainers).

Everything else is dropped wherever the cluster enforces NetworkPolicies: pods of other namespaces,
other jobs of the namespace, and the job's own earlier attempts (a fenced gang still running on a
cut-off node cannot reach the new one). Ingress only: egress stays as the namespace has it.

A pod's labels are the only identity a NetworkPolicy knows: whoever may create pods in the job's
namespace can give one the gang's labels (the README's threat model says so); the namespace selector of
the operator's peer uses `kubernetes.io/metadata.name`, which the API server sets and nobody can forge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.job import FineTuneJob

#: The label the API server puts on every namespace, its name (immutable, unforgeable).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class GangNetwork:
    """What the operator needs to write each attempt's policy (`--gang-network-policy`, from the chart)."""

    operator_namespace: str
    """Namespace of the operator's pods."""
    operator_labels: Mapping[str, str]
    """Labels that select the operator's pods (its Deployment's selector)."""
    metrics_from: tuple[Mapping[str, Any], ...] = ()
    """More NetworkPolicyPeer objects admitted to TCP 9400 (a Prometheus scraping trainers)."""


def policy_name(job: FineTuneJob, attempt: int) -> str:
    """One policy per attempt, named as the attempt's pods are (`<job>-a<attempt>-w<index>`) without the index."""
    return f"{job.name}-a{attempt}"


def build_network_policy(
    job: FineTuneJob,
    attempt: int,
    network: GangNetwork,
    gang_labels: Mapping[str, str],
    metrics_port: int,
    owner: Mapping[str, Any],
) -> dict[str, Any]:
    """The policy of `attempt`'s gang; `gang_labels`: the labels every pod of that attempt (and only of
    it) carries; `owner`: the job's owner reference."""
    gang = {"matchLabels": dict(gang_labels)}
    operator = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: network.operator_namespace}},
        "podSelector": {"matchLabels": dict(network.operator_labels)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": policy_name(job, attempt),
            "namespace": job.namespace,
            "labels": dict(gang_labels),
            "ownerReferences": [dict(owner)],
        },
        "spec": {
            "podSelector": gang,
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": gang}]},
                {
                    "from": [operator, *(dict(peer) for peer in network.metrics_from)],
                    "ports": [{"protocol": "TCP", "port": metrics_port}],
                },
            ],
        },
    }


#: What a NetworkPolicyPeer and a LabelSelector may hold. The API server drops unknown fields of a create
#: without strict validation: a misspelt `matchLabel` would leave `namespaceSelector: {}`, every namespace.
PEER_KEYS = {"podSelector", "namespaceSelector", "ipBlock"}
SELECTOR_KEYS = {"matchLabels", "matchExpressions"}


def peer_problem(peer: object) -> str | None:
    """What is wrong with one NetworkPolicyPeer of `metricsFrom` (None: nothing)."""
    if not isinstance(peer, dict) or not peer:
        return "must be a non-empty NetworkPolicyPeer object (podSelector, namespaceSelector or ipBlock)"
    if unknown := sorted(set(peer) - PEER_KEYS):
        return f"unknown key(s) {', '.join(unknown)}: a peer has podSelector, namespaceSelector or ipBlock"
    for key in ("podSelector", "namespaceSelector"):
        selector = peer.get(key)
        if selector is not None and (not isinstance(selector, dict) or set(selector) - SELECTOR_KEYS):
            return f"{key} may hold only matchLabels and matchExpressions"
    block = peer.get("ipBlock")
    if block is not None and (not isinstance(block, dict) or "cidr" not in block or set(block) - {"cidr", "except"}):
        return "ipBlock needs cidr (and may hold except)"
    return None


def parse_gang_network(text: str, operator_namespace: str) -> GangNetwork:
    """`--gang-network-policy`'s JSON, `{"operatorLabels": {...}, "metricsFrom": [...]}`, as settings.
    ValueError naming what is wrong (the flag comes from the chart; a hand-written one may be wrong)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object with operatorLabels and, optionally, metricsFrom")
    unknown = sorted(set(value) - {"operatorLabels", "metricsFrom"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}: only operatorLabels and metricsFrom")
    labels = value.get("operatorLabels")
    if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("operatorLabels must be a non-empty object of label name -> value (the operator pods' labels)")
    peers = value.get("metricsFrom")
    peers = [] if peers is None else peers
    if not isinstance(peers, list):
        raise ValueError("metricsFrom must be a list of NetworkPolicyPeer objects")
    for index, peer in enumerate(peers):
        if (problem := peer_problem(peer)) is not None:
            raise ValueError(f"metricsFrom[{index}]: {problem}")
    if not operator_namespace:
        raise ValueError("the operator's namespace is unknown: set POD_NAMESPACE (the chart does)")
    return GangNetwork(operator_namespace, dict(labels), tuple(peers))
