"""Whether a whole gang fits the namespace's ResourceQuotas, before any of its pods is created.

The API server checks quotas one pod at a time, so a gang of four in a namespace with room for two gets
two pods that hold the quota while they wait for peers that can never come (the classic partial-gang
deadlock that Kueue exists to avoid). Checking the gang as a whole first means a gang is created entirely
or not at all, and the job says which quota and how much it asked for. Quotas with scopes (PriorityClass,
BestEffort, ...) are left to the server: when one of them refuses a pod, the refusal is classified as
any other (refusals.py) and the gang removed. Pure: quota and pod dicts in, a message or None out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubetune.api.kubernetes_syntax import parse_quantity

#: Quota resource names that count pods.
POD_COUNTS = ("pods", "count/pods")
#: Unprefixed quota names that mean requests (Kubernetes' legacy names).
LEGACY_REQUESTS = ("cpu", "memory", "ephemeral-storage")


def _containers(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    return (pod.get("spec") or {}).get("containers") or []


def _sum(pods: Sequence[Mapping[str, Any]], kind: str, resource: str) -> Decimal:
    total = Decimal(0)
    for pod in pods:
        for container in _containers(pod):
            value = ((container.get("resources") or {}).get(kind) or {}).get(resource)
            total += parse_quantity(str(value)) or Decimal(0) if value is not None else Decimal(0)
    return total


def gang_demand(resource: str, pods: Sequence[Mapping[str, Any]]) -> Decimal | None:
    """What the gang adds to quota resource `resource`; None for names this check does not evaluate."""
    if resource in POD_COUNTS:
        return Decimal(len(pods))
    if resource.startswith("requests."):
        return _sum(pods, "requests", resource.removeprefix("requests."))
    if resource.startswith("limits."):
        return _sum(pods, "limits", resource.removeprefix("limits."))
    if resource in LEGACY_REQUESTS:
        return _sum(pods, "requests", resource)
    return None


def _show(value: Decimal) -> str:
    return format(value.normalize(), "f")


def gang_shortfall(quotas: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The first quota the gang `pods` would exceed, in words; None when it fits (or no quota applies)."""
    for quota in quotas:
        spec = quota.get("spec") or {}
        if spec.get("scopes") or spec.get("scopeSelector"):
            continue
        status = quota.get("status") or {}
        hard, used = status.get("hard") or {}, status.get("used") or {}
        for resource in sorted(hard):
            demand = gang_demand(resource, pods)
            limit = parse_quantity(str(hard[resource]))
            in_use = parse_quantity(str(used.get(resource, "0"))) or Decimal(0)
            if demand is None or limit is None or demand == 0 or in_use + demand <= limit:
                continue
            name = (quota.get("metadata") or {}).get("name", "?")
            return (
                f"exceeded quota {name}: the gang of {len(pods)} worker(s) asks for {resource}={_show(demand)}, "
                f"{used.get(resource, '0')} of {hard[resource]} is used; waiting for room (retried when the "
                "quota or its usage changes)"
            )
    return None
