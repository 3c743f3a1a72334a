"""The benchmark's reductions and its operator-scale path on a tiny scale (no timings asserted).

The numbers `make bench` reports are only as good as the arithmetic that makes them: the steady-state
window, the per-step token totals from each rank's micro-batch counts, percentiles and the MFU formula
are checked against hand-worked cases. The operator-scale path runs for real (the operator process
against the emulated API server) with 4 jobs, checking that it measures what it claims to, not how fast.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import flops, report, report_smol, stats
from bench.workload import ModelSize

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("times", "tokens", "warmup", "expected"),
    [
        # steps end at 1, 2, 4, 5, 7: after 1 warm-up step, 4 steps in 6 s; durations 1, 2, 1, 2
        ([1.0, 2.0, 4.0, 5.0, 7.0], [9, 10, 10, 10, 10], 1, stats.Window(4, 40, 6.0, 1.5)),
        ([0.0, 10.0, 11.0, 13.0], [100, 100, 4, 6], 2, stats.Window(2, 10, 3.0, 1.5)),
    ],
)
def test_window_leaves_out_the_warm_up_and_measures_between_step_ends(
    times: list[float], tokens: list[int], warmup: int, expected: stats.Window
) -> None:
    assert stats.window(times, tokens, warmup) == expected


def test_window_refuses_too_few_steps_and_mismatched_series() -> None:
    with pytest.raises(ValueError, match="too few"):
        stats.window([1.0, 2.0], [1, 1], 1)
    with pytest.raises(ValueError, match="token counts"):
        stats.window([1.0, 2.0, 3.0], [1, 1], 1)


def test_per_step_tokens_sums_each_ranks_micro_batches_and_ignores_look_ahead() -> None:
    ranks = [[1, 2, 3, 4, 99], [10, 20, 30, 40]]
    assert stats.per_step_tokens(ranks, accumulation=2, steps=2) == [33, 77]
    with pytest.raises(ValueError, match="before step 3"):
        stats.per_step_tokens(ranks, accumulation=2, steps=3)


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.5), (99, 3.97), (100, 4.0)])
def test_percentile_interpolates_between_closest_ranks(q: float, expected: float) -> None:
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)
    assert math.isnan(stats.percentile([], q))


def test_flops_per_token_counts_matmul_parameters_and_attention() -> None:
    size = ModelSize(hidden=4, layers=2, heads=2, intermediate=8)
    # per layer 4*16 + 3*32 = 160; two layers 320; head 10*4 = 40 -> N = 360
    assert flops.matmul_parameters(size, vocab=10) == 360
    assert flops.flops_per_token(size, vocab=10, seq_length=16) == 6 * 360 + 12 * 2 * 4 * 16
    assert flops.mfu(1000.0, size, 10, 16, peak=1e6) == pytest.approx(1000 * (2160 + 1536) / 1e6)


def test_readme_table_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n")
    assert report.update_readme(readme, f"{report.README_START}\nnew\n{report.README_END}")
    assert readme.read_text() == f"intro\n{report.README_START}\nnew\n{report.README_END}\noutro\n"
    unmarked = tmp_path / "OTHER.md"
    unmarked.write_text("no markers\n")
    assert not report.update_readme(unmarked, "table") and unmarked.read_text() == "no markers\n"


def test_the_smol_section_replaces_only_its_own_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n{report_smol.smol_section(None)}\n## 2. GPU\n")
    run = {"side": "kubetune", "repetition": 0, "tokens_per_second": 90.0, "step_seconds": 22.0, "process_seconds": 99}
    side = {"tokens_per_second": 90.0, "peak_rss_bytes": 3 * 2**30, "step_rise_bytes": 600 * 2**20}
    smol = {
        "profile": {
            "model": {"hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "intermediate": 1536, "vocab": 49152},
            "precision": "fp32",
            "processes": 2,
            "zero_stage": 2,
            "seq_length": 512,
            "micro_batch": 2,
            "accumulation": 1,
            "steps": 5,
            "warmup_steps": 2,
            "repetitions": 1,
        },
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 8, "date": "d", "load_at_start": 1, "load_at_end": 2},
        "seconds": 60.0,
        "trainer": {
            "summary": {
                "uniform": {
                    "kubetune": side,
                    "transformers": {
                        **side,
                        "tokens_per_second": 75.0,
                        "peak_rss_bytes": 4 * 2**30,
                        "step_rise_bytes": 1000 * 2**20,
                    },
                    "tokens_per_second_ratio": 1.2,
                }
            },
            "runs": [run, {**run, "side": "transformers", "peak_rss_bytes": None}],
        },
    }
    assert report.replace_block(doc, report.SMOL_START, report.SMOL_END, report_smol.smol_section(smol))
    text = doc.read_text()
    assert text.startswith("# B\n") and text.endswith("\n## 2. GPU\n") and "Pending" not in text
    assert "| uniform | 90 | 75 | **1.20x** | 3072 MiB | 4096 MiB | 600 MiB | 1000 MiB | 40.0 % |" in text
    assert (
        "Goals, uniform: tokens/s ratio 1.20x (goal >= 1.15x: met); step memory reduction 40.0 % (goal >= 30.0 %: met)."
        in text
    )


def test_window_peak_looks_only_inside_the_measured_steps() -> None:
    from bench.trainers import MemorySample, window_peak, window_rise

    looks = [(1.0, 900, 800), (2.0, 300, 250), (3.0, 500, 300), (4.0, 400, 350), (5.0, 950, 900)]
    samples = [MemorySample(at, peak, resident) for at, peak, resident in looks]
    assert window_peak(samples, 2.0, 4.0) == 500
    assert window_rise(samples, 2.0, 4.0) == 250 and window_rise(samples, 6.0, 7.0) is None
    assert window_peak(samples, 6.0, 7.0) is None
