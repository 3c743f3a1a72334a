"""Medians, percentiles and the steady-state figures of one training run, as pure functions.

Both trainers are reduced by the same function (`window`), from the same two series: the wall-clock
time at the end of every optimizer step, and the non-padding tokens of every step (the whole gang's).
The first `warmup` steps are left out, so start-up, allocator warm-up and first-call compilation count
for neither side; what remains is the time between step ends, which includes everything a user waits
for between two steps (data loading, the step, logging).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Steady-state figures of one run."""

    steps: int
    """Optimizer steps measured (after the warm-up)."""
    tokens: int
    """Non-padding tokens of those steps."""
    seconds: float
    """Wall time from the end of the last warm-up step to the end of the last step."""
    step_seconds: float
    """Median time between two step ends."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def window(step_end_times: Sequence[float], step_tokens: Sequence[int], warmup: int) -> Window:
    """The figures of steps warmup+1 .. N; step_end_times[i] and step_tokens[i] belong to step i+1."""
    if len(step_end_times) != len(step_tokens):
        raise ValueError(f"{len(step_end_times)} step times but {len(step_tokens)} token counts")
    if not 0 < warmup < len(step_end_times) - 1:
        raise ValueError(f"warm-up of {warmup} steps leaves too few of {len(step_end_times)} to measure")
    durations = [b - a for a, b in zip(step_end_times[warmup - 1 : -1], step_end_times[warmup:], strict=True)]
    return Window(
        steps=len(durations),
        tokens=sum(step_tokens[warmup:]),
        seconds=step_end_times[-1] - step_end_times[warmup - 1],
        step_seconds=statistics.median(durations),
    )


def per_step_tokens(micro_batch_tokens: Sequence[Sequence[int]], accumulation: int, steps: int) -> list[int]:
    """The gang's tokens per optimizer step from each rank's per-micro-batch counts (in the order the
    rank built its micro-batches; step s is micro-batches s*accumulation .. (s+1)*accumulation - 1, and
    counts past the last step, from a loader's look-ahead, are ignored)."""
    totals = []
    for step in range(steps):
        start, end = step * accumulation, (step + 1) * accumulation
        if any(len(rank) < end for rank in micro_batch_tokens):
            raise ValueError(f"micro-batch counts end before step {step + 1}")
        totals.append(sum(sum(rank[start:end]) for rank in micro_batch_tokens))
    return totals


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
