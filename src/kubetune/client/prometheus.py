"""A job's loss history from Prometheus (`kubetune status --prometheus URL`), for the report's chart.

The status carries only the latest losses; the trainer's rank 0 exports `kubetune_train_loss` and
`kubetune_eval_loss` (labels `namespace`, `finetunejob`) and the chart's PodMonitor has Prometheus scrape
them, so their range query over the job's lifetime is the history. Plain HTTP GETs of the query API
(`/api/v1/query_range`), no client library; every failure is a `PrometheusError` whose text says why,
and the report shows it instead of a chart (the command still succeeds).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from kubetune.view.chart import LossSeries

#: (series name in the chart, metric)
LOSS_METRICS = (("train loss", "kubetune_train_loss"), ("eval loss", "kubetune_eval_loss"))
#: Points per series asked for, at most (the chart draws fewer; Prometheus allows 11,000).
MAX_POINTS = 240
#: Shortest query step, in seconds: about a scrape interval.
MIN_STEP_SECONDS = 15
TIMEOUT_SECONDS = 10.0

Fetch = Callable[[str], Mapping[str, Any]]


class PrometheusError(Exception):
    """The history could not be read; the text says why."""


def fetch_json(url: str) -> Mapping[str, Any]:
    """GET `url` and decode its JSON (Prometheus answers JSON, errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            payload: Mapping[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            payload = json.loads(error.read())
        except ValueError:
            raise PrometheusError(f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PrometheusError(f"not reachable ({reason})") from error
    except ValueError as error:
        raise PrometheusError("the answer is not JSON: is this a Prometheus server?") from error
    return payload


def query_range_url(base: str, query: str, start: float, end: float, step: float) -> str:
    parameters = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step})
    return f"{base.rstrip('/')}/api/v1/query_range?{parameters}"


def step_for(start: float, end: float) -> int:
    return max(MIN_STEP_SECONDS, math.ceil((end - start) / MAX_POINTS))


def series_from(name: str, payload: Mapping[str, Any]) -> LossSeries:
    """A query_range answer as one series: every result's points, merged by time (the last wins)."""
    if payload.get("status") != "success":
        raise PrometheusError(f"{payload.get('errorType', 'error')}: {payload.get('error', 'no answer')}")
    data = payload.get("data") or {}
    if data.get("resultType") != "matrix":
        raise PrometheusError(f"expected a matrix, got {data.get('resultType')!r}")
    points: dict[float, float] = {}
    for result in data.get("result") or []:
        for moment, value in result.get("values") or []:
            points[float(moment)] = float(value)
    return LossSeries(name, tuple(sorted(points.items())), x="time")


def loss_history(
    base: str, namespace: str, job: str, start: float, end: float, fetch: Fetch = fetch_json
) -> list[LossSeries]:
    """Train and eval loss of the job between `start` and `end` (Unix times)."""
    start = min(start, end - MIN_STEP_SECONDS)
    step = step_for(start, end)
    selector = f'{{namespace="{namespace}",finetunejob="{job}"}}'
    return [
        series_from(name, fetch(query_range_url(base, f"max({metric}{selector})", start, end, step)))
        for name, metric in LOSS_METRICS
    ]
