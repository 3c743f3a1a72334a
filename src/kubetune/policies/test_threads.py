"""Threads per rank from the worker's CPU: limit first, then request, then the machine's cores."""

from __future__ import annotations

import pytest

from kubetune.policies.threads import threads_per_process


@pytest.mark.parametrize(
    "processes, limits, requests, cores, expected",
    [
        (1, None, {"cpu": "400m"}, 2, 1),  # the real node's workers: a share of a core is one thread
        (1, None, {"cpu": "4"}, 64, 4),  # a request on a large node: not the node's 64
        (2, {"cpu": "6"}, {"cpu": "2"}, 64, 3),  # the limit is what the cgroup allows
        (8, {"cpu": "7500m"}, None, 64, 1),  # 0.94 cores each: at least one
        (1, {"memory": "1Gi"}, {"cpu": "2.5"}, 8, 2),  # a limit without cpu: the request
        (2, None, None, 2, 1),  # kubetune run on 2 cores, 2 ranks
        (1, None, None, None, None),  # nothing known (a GPU worker without a stated CPU): torch's default
        (1, {"nvidia.com/gpu": "1"}, {"memory": "8Gi"}, None, None),
    ],
)
def test_threads_per_process(
    processes: int,
    limits: dict[str, str] | None,
    requests: dict[str, str] | None,
    cores: int | None,
    expected: int | None,
) -> None:
    assert threads_per_process(processes, limits, requests, cores) == expected
