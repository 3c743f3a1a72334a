"""Loss history as text: one sparkline per series (`▁▂▃▄▅▆▇█`), with its first, last and lowest value.

A series is resampled to the chart's width by averaging neighbouring points, and scaled between its
own minimum and maximum, so the shape is what the line shows; the figures beside it give the scale.
A value that is not finite (a NaN or infinite loss) is drawn as `!`, never averaged away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

BLOCKS = "▁▂▃▄▅▆▇█"
NOT_FINITE = "!"
#: Characters of one sparkline, at most.
DEFAULT_WIDTH = 48


@dataclass(frozen=True)
class LossSeries:
    """One loss over time: `points` are (x, value), x an optimizer step or a Unix time, ascending."""

    name: str
    points: tuple[tuple[float, float], ...]
    x: Literal["step", "time"] = "step"


def resample(values: Sequence[float], width: int) -> list[float]:
    """At most `width` values: consecutive buckets of `values` averaged (a non-finite value taints its
    bucket, so that a NaN stays visible)."""
    if len(values) <= width:
        return list(values)
    buckets = []
    for i in range(width):
        bucket = values[i * len(values) // width : (i + 1) * len(values) // width]
        finite = all(math.isfinite(v) for v in bucket)
        buckets.append(sum(bucket) / len(bucket) if finite else math.nan)
    return buckets


def sparkline(values: Sequence[float], width: int = DEFAULT_WIDTH) -> str:
    """`values` as block characters, lowest `▁`, highest `█`; a flat series sits in the middle."""
    points = resample(values, width)
    finite = [v for v in points if math.isfinite(v)]
    if not finite:
        return NOT_FINITE * len(points)
    low, high = min(finite), max(finite)
    top = len(BLOCKS) - 1
    chars = []
    for value in points:
        if not math.isfinite(value):
            chars.append(NOT_FINITE)
        elif high == low:
            chars.append(BLOCKS[top // 2])
        else:
            chars.append(BLOCKS[round((value - low) / (high - low) * top)])
    return "".join(chars)


def number(value: float | None, digits: int = 4) -> str:
    """A figure as people read it: 4 significant digits, `-` when there is none."""
    return "-" if value is None else f"{value:.{digits}g}"


def duration(seconds: float | None) -> str:
    """`45s`, `2m10s`, `1h05m`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _span(series: LossSeries) -> str:
    first, last = series.points[0][0], series.points[-1][0]
    if series.x == "time":
        return f"over {duration(last - first)}"
    return f"step {first:g}" if first == last else f"steps {first:g}-{last:g}"


def chart_lines(series: Sequence[LossSeries], width: int = DEFAULT_WIDTH) -> list[str]:
    """One line per series that has points: name, sparkline, first -> last, lowest, how many points."""
    drawn = [s for s in series if s.points]
    label = max((len(s.name) for s in drawn), default=0)
    lines = []
    for s in drawn:
        values = [v for _, v in s.points]
        finite = [v for v in values if math.isfinite(v)]
        lowest = f", lowest {number(min(finite))}" if finite else ""
        lines.append(
            f"{s.name:<{label}}  {sparkline(values, width)}  {number(values[0])} -> {number(values[-1])}{lowest} "
            f"({len(values)} point{'s' if len(values) != 1 else ''}, {_span(s)})"
        )
    return lines
