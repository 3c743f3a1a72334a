"""Sparklines and the figures beside them, as tables."""

from __future__ import annotations

import math

import pytest

from kubetune.view.chart import LossSeries, chart_lines, duration, number, resample, sparkline

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ([], ""),
        ([2.5], "▄"),
        ([1.0, 1.0, 1.0], "▄▄▄"),  # flat: the middle, not the bottom
        ([0, 1, 2, 3, 4, 5, 6, 7], "▁▂▃▄▅▆▇█"),
        ([3.0, 2.0, 1.0], "█▅▁"),
        ([1.0, math.nan, 0.5], "█!▁"),  # a NaN loss stays visible
        ([math.inf], "!"),
        ([-1.0, 0.0, 1.0], "▁▅█"),  # negative values scale too
    ],
)
def test_sparkline(values: list[float], line: str) -> None:
    assert sparkline(values) == line


def test_a_long_series_is_averaged_down_to_the_width() -> None:
    assert resample([1.0, 3.0, 5.0, 7.0], 2) == [2.0, 6.0]
    assert math.isnan(resample([1.0, math.nan, 5.0, 7.0], 2)[0])
    assert len(sparkline([float(i) for i in range(1000)], width=48)) == 48
    assert sparkline([float(i) for i in range(1000)], width=8) == "▁▂▃▄▅▆▇█"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "?"), (math.nan, "?"), (-3, "0s"), (0, "0s"), (45.9, "45s"), (130, "2m10s"), (3900, "1h05m")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(("value", "text"), [(None, "-"), (1.0, "1"), (1.23456, "1.235"), (0.000123, "0.000123")])
def test_number(value: float | None, text: str) -> None:
    assert number(value) == text


def test_chart_lines_name_the_scale_and_the_span() -> None:
    train = LossSeries("train loss", ((1, 3.0), (2, 2.0), (3, 1.0)))
    evals = LossSeries("eval", ((2, 2.5),))
    timed = LossSeries("over time", ((1000.0, 2.0), (1600.0, 1.0)), x="time")
    assert chart_lines([train, evals, LossSeries("empty", ()), timed]) == [
        "train loss  █▅▁  3 -> 1, lowest 1 (3 points, steps 1-3)",
        "eval        ▄  2.5 -> 2.5, lowest 2.5 (1 point, step 2)",
        "over time   █▁  2 -> 1, lowest 1 (2 points, over 10m00s)",
    ]
    assert chart_lines([LossSeries("nan", ((1, math.nan),))]) == ["nan  !  nan -> nan (1 point, step 1)"]
