"""bench/operator_scale.py measures what it says, on a small scale: the real operator against the
emulated API server (the benchmark's own harness)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def test_operator_scale_measures_launch_steady_state_and_restarts(tmp_path: Path) -> None:
    from bench import operator_scale

    result = asyncio.run(operator_scale.measure_scale(4, tmp_path, steady_seconds=1.0, restarts=2))
    assert result.jobs == 4 and result.restarts_measured == 2
    assert 0 < result.create_to_pods_p50 <= result.create_to_pods_p99 <= result.create_to_pods_max
    assert result.restart_p50 > 0 and result.peak_rss_bytes > 10 * 2**20 and result.operator_threads > 1
    assert (tmp_path / "operator.log").read_text()
