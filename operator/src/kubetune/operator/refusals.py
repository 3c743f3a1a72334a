"""What a refused create means for the job: wait (and retry) or fail, and which spec field caused it.

The API server and its admission plugins refuse a pod for three kinds of reasons, and each needs a
different answer:

| refusal | example (the server's words) | the job |
|---|---|---|
| a ResourceQuota (403) | `exceeded quota: team, requested: pods=1, used: pods=2, limited: pods=2` | Pending, `QuotaExceeded`; retried |
| the operator's own permissions (403, RBAC) | `User "system:serviceaccount:..." cannot create resource "pods"` | Pending, `CreateForbidden`; retried (an admin can fix the Role) |
| the pod itself (422 invalid, 400, 403 from admission) | `no PriorityClass with name urgent was found`, `violates PodSecurity "restricted:latest"`, `maximum cpu usage per Container is 4` | Failed, `PodRejected`, naming the spec field |

Pure: the HTTP code and the server's Status object in, a `CreateRefusal` (or None: not a refusal, e.g.
a transient error that kube.py already retried) out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.status import Reason
from kubetune.policies.reconcile import CreateRefusal

#: (what the pod field path or the message mentions, lower-cased; the FineTuneJob field that produced it).
SPEC_FIELD_OF = (
    ("priorityclass", "spec.scheduling.priorityClassName"),
    ("toleration", "spec.scheduling.tolerations"),
    ("nodeselector", "spec.scheduling.nodeSelector"),
    ("resources", "spec.resources"),
    ("cpu", "spec.resources"),
    ("memory", "spec.resources"),
    ("nvidia.com/gpu", "spec.resources"),
    ("image", "spec.image"),
    ("persistentvolumeclaim", "spec.storage"),
    ("volume", "spec.storage"),
    ("serviceaccount", "spec.serviceAccountName"),
)


#: 403s that say the API server is not ready yet, not that anything is wrong with the object: right after
#: kube-apiserver (re)starts, OwnerReferencesPermissionEnforcement looks the owner's kind up in a
#: discovery cache refreshed every 30 s and refuses "cannot find RESTMapping" meanwhile (seen on the real
#: control plane: a job created during a restart failed PodRejected for good).
TRANSIENT_403 = ("cannot find restmapping",)


def spec_field(message: str, causes: list[Mapping[str, Any]]) -> str | None:
    """The FineTuneJob field behind a refusal, from the invalid pod field's path first, then the message."""
    for text in [str(cause.get("field") or "") for cause in causes] + [message]:
        lowered = text.lower()
        for needle, field in SPEC_FIELD_OF:
            if needle in lowered:
                return field
    return None


def classify(status: int, details: Mapping[str, Any], fallback: str = "") -> CreateRefusal | None:
    """The refusal of one create (`status`: its HTTP code, `details`: the server's Status object)."""
    message = str(details.get("message") or fallback)
    lowered = message.lower()
    if status == 403 and any(transient in lowered for transient in TRANSIENT_403):
        return None  # the API server's own state, not the pod: the reconcile fails and is retried
    if status == 403 and ("exceeded quota" in lowered or "status unknown for quota" in lowered):
        return CreateRefusal(True, Reason.QUOTA_EXCEEDED, f"a ResourceQuota refused a worker: {message}")
    if status == 403 and "cannot create resource" in lowered:
        return CreateRefusal(
            True,
            Reason.CREATE_FORBIDDEN,
            f"the operator may not create the job's objects: {message}. Grant it the chart's RBAC (helm upgrade "
            "kubetune, or add the namespace to its watched namespaces)",
        )
    if status in (400, 403, 422):
        causes = list((details.get("details") or {}).get("causes") or [])
        field = spec_field(message, causes)
        where = f"{field}" if field else "the job's spec"
        return CreateRefusal(
            False, Reason.POD_REJECTED, f"the cluster refused the worker pod made from {where}: {message}"
        )
    return None
