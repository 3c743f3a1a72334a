"""Spec changes after start: table of (launched, live) -> refused fields and the spec acted on."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.policies.spec_changes import effective_spec, refused_fields

pytestmark = pytest.mark.timeout(10)

BASE: dict[str, Any] = {"model": {"source": "hf://a/b"}, "dataset": {"train": "t.jsonl"}, "suspend": False}


@pytest.mark.parametrize(
    ("live", "refused", "effective"),
    [
        (BASE, [], BASE),
        ({**BASE, "suspend": True}, [], {**BASE, "suspend": True}),
        ({**BASE, "scheduling": {"queueName": "q"}}, [], {**BASE, "scheduling": {"queueName": "q"}}),
        ({**BASE, "model": {"source": "hf://c/d"}}, ["model"], BASE),
        ({**BASE, "distributed": {"workers": 4}, "suspend": True}, ["distributed"], {**BASE, "suspend": True}),
        ({k: v for k, v in BASE.items() if k != "suspend"}, [], {k: v for k, v in BASE.items() if k != "suspend"}),
    ],
)
def test_spec_changes(live: dict[str, Any], refused: list[str], effective: dict[str, Any]) -> None:
    assert refused_fields(BASE, live) == refused
    assert effective_spec(BASE, live) == effective


def test_before_launch_the_live_spec_is_used() -> None:
    live = {**BASE, "model": {"source": "hf://c/d"}}
    assert effective_spec(None, live) == live
