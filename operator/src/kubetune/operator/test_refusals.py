"""Table test: each refusal the real API server gives (messages copied from its answers) is classified."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.status import Reason
from kubetune.operator.refusals import classify


def status(message: str, *fields: str) -> dict[str, Any]:
    return {"kind": "Status", "message": message, "details": {"causes": [{"field": f} for f in fields]}}


@pytest.mark.parametrize(
    ("code", "body", "retryable", "reason", "named"),
    [
        (403, status('pods "j-a1-w1" is forbidden: exceeded quota: team, requested: pods=1, used: pods=2, limited: '
                     "pods=2"), True, Reason.QUOTA_EXCEEDED, "exceeded quota: team"),
        (403, status('pods is forbidden: User "system:serviceaccount:kubetune-system:kubetune" cannot create '
                     'resource "pods" in API group "" in the namespace "team"'), True, Reason.CREATE_FORBIDDEN,
         "Grant it the chart's RBAC"),
        (403, status('pods "j-a1-w0" is forbidden: no PriorityClass with name urgent was found'), False,
         Reason.POD_REJECTED, "spec.scheduling.priorityClassName"),
        (422, status('Pod "j-a1-w0" is invalid: spec.tolerations[0].effect: Unsupported value: "Sometimes"',
                     "spec.tolerations[0].effect"), False, Reason.POD_REJECTED, "spec.scheduling.tolerations"),
        (403, status('pods "j-a1-w0" is forbidden: maximum cpu usage per Container is 2, but limit is 4'), False,
         Reason.POD_REJECTED, "spec.resources"),
        (403, status('pods "j-a1-w0" is forbidden: violates PodSecurity "restricted:latest": hostPath volumes'),
         False, Reason.POD_REJECTED, "spec.storage"),
        (422, status('Pod "j-a1-w0" is invalid: metadata.labels: Invalid value'), False, Reason.POD_REJECTED,
         "the job's spec"),
    ],
)  # fmt: skip
def test_classify(code: int, body: dict[str, Any], retryable: bool, reason: str, named: str) -> None:
    refusal = classify(code, body)
    assert refusal is not None
    assert (refusal.retryable, refusal.reason) == (retryable, reason)
    assert named in refusal.message and body["message"] in refusal.message


@pytest.mark.parametrize("code", [404, 409, 429, 500, 0])
def test_other_errors_are_not_refusals(code: int) -> None:
    assert classify(code, status("whatever")) is None


def test_an_api_server_still_starting_is_no_refusal_of_the_pod() -> None:
    """Right after kube-apiserver restarts, OwnerReferencesPermissionEnforcement cannot yet map the owner's kind
    (the real server's words): retried, never PodRejected."""
    message = (
        'services "j" is forbidden: cannot set blockOwnerDeletion in this case because cannot find RESTMapping for '
        'APIVersion kubetune.io/v1alpha1 Kind FineTuneJob: no matches for kind "FineTuneJob" in version '
        '"kubetune.io/v1alpha1"'
    )
    assert classify(403, status(message)) is None
