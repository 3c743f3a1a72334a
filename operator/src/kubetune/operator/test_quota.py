"""Table tests of the gang-wide quota check."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator.quota import gang_demand, gang_shortfall


def a_pod(cpu: str = "1", memory: str = "2Gi", gpu: str | None = None) -> dict[str, Any]:
    requests = {"cpu": cpu, "memory": memory} | ({"nvidia.com/gpu": gpu} if gpu else {})
    limits = {"memory": memory} | ({"nvidia.com/gpu": gpu} if gpu else {})
    return {"spec": {"containers": [{"name": "trainer", "resources": {"requests": requests, "limits": limits}}]}}


def a_quota(hard: dict[str, str], used: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "team"}, "spec": {"hard": hard, **spec}, "status": {"hard": hard, "used": used or {}}}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("pods", "2"),
        ("count/pods", "2"),
        ("requests.cpu", "2"),
        ("cpu", "2"),
        ("requests.memory", "4294967296"),
        ("limits.memory", "4294967296"),
        ("limits.cpu", "0"),
        ("requests.nvidia.com/gpu", "0"),
        ("services", None),
    ],
)
def test_gang_demand(resource: str, expected: str | None) -> None:
    demand = gang_demand(resource, [a_pod(), a_pod()])
    assert (None if demand is None else str(demand)) == expected


@pytest.mark.parametrize(
    ("quota", "fits", "named"),
    [
        (a_quota({"pods": "2"}), True, ""),
        (a_quota({"pods": "2"}, {"pods": "1"}), False, "pods=2, 1 of 2 is used"),
        (a_quota({"requests.cpu": "1500m"}), False, "requests.cpu=2, 0 of 1500m is used"),
        (a_quota({"requests.memory": "8Gi"}, {"requests.memory": "4Gi"}), True, ""),
        (a_quota({"requests.memory": "8Gi"}, {"requests.memory": "5Gi"}), False, "requests.memory=4294967296"),
        (a_quota({"requests.nvidia.com/gpu": "0"}), True, ""),  # the gang asks for none
        (a_quota({"pods": "1"}, scopes=["BestEffort"]), True, ""),  # scoped: left to the server
        ({"metadata": {"name": "new"}, "spec": {"hard": {"pods": "1"}}}, True, ""),  # not yet computed
    ],
)
def test_gang_shortfall(quota: dict[str, Any], fits: bool, named: str) -> None:
    message = gang_shortfall([quota], [a_pod(), a_pod()])
    assert (message is None) is fits, message
    if not fits:
        assert message is not None and "exceeded quota " in message and named in message


def test_gpus_are_counted() -> None:
    message = gang_shortfall([a_quota({"requests.nvidia.com/gpu": "8"})], [a_pod(gpu="8"), a_pod(gpu="8")])
    assert message is not None and "requests.nvidia.com/gpu=16, 0 of 8 is used" in message
