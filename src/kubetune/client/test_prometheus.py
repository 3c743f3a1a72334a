"""The loss history from Prometheus' query API: the queries asked, the answers read, the failures said."""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Mapping
from typing import Any

import pytest

from kubetune.client.prometheus import PrometheusError, loss_history, series_from, step_for

pytestmark = pytest.mark.timeout(10)


def matrix(*results: list[list[Any]]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "matrix", "result": [{"values": v} for v in results]}}


def test_series_are_merged_by_time() -> None:
    series = series_from("train loss", matrix([[10, "3"], [20, "2"]], [[20, "2.5"], [5, "4"]]))
    assert series.points == ((5.0, 4.0), (10.0, 3.0), (20.0, 2.5)) and series.x == "time"
    assert series_from("eval loss", matrix()).points == ()
    assert math.isnan(series_from("nan", matrix([[1, "NaN"]])).points[0][1])  # kept: the chart draws it as `!`


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, "bad_data: parse error"),
        ({"status": "success", "data": {"resultType": "vector", "result": []}}, "expected a matrix, got 'vector'"),
    ],
)
def test_errors_in_the_answer(payload: dict[str, Any], words: str) -> None:
    with pytest.raises(PrometheusError, match=words):
        series_from("x", payload)


@pytest.mark.parametrize(("start", "end", "step"), [(0, 60, 15), (0, 3600, 15), (0, 36000, 150), (0, 86400, 360)])
def test_the_step_keeps_the_points_bounded(start: float, end: float, step: int) -> None:
    assert step_for(start, end) == step


def test_loss_history_asks_for_each_loss_of_the_job() -> None:
    asked: list[Mapping[str, list[str]]] = []

    def fetch(url: str) -> Mapping[str, Any]:
        assert url.startswith("http://prometheus:9090/api/v1/query_range?")
        asked.append(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query))
        return matrix([[1000, "2"], [1060, "1.5"]])

    series = loss_history("http://prometheus:9090/", "team", "demo", 1000.0, 1010.0, fetch)
    assert [s.name for s in series] == ["train loss", "eval loss"]
    assert [q["query"][0] for q in asked] == [
        'max(kubetune_train_loss{namespace="team",finetunejob="demo"})',
        'max(kubetune_eval_loss{namespace="team",finetunejob="demo"})',
    ]
    # a job younger than one step still gets a range of one step
    assert (asked[0]["start"], asked[0]["end"], asked[0]["step"]) == (["995.000"], ["1010.000"], ["15"])
    assert json.dumps(series[0].points) == "[[1000.0, 2.0], [1060.0, 1.5]]"
