"""gradAccumDtype: which dtype DeepSpeed accumulates gradients in, and the combinations the API refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.trainer.engine import deepspeed_config, grad_accum_dtype
from tests.support import tiny


@pytest.mark.parametrize(
    ("precision", "zero_stage", "requested", "expected"),
    [
        ("bf16", 2, None, "fp32"),
        ("bf16", 1, None, "fp32"),
        ("bf16", 3, "fp32", "fp32"),
        ("bf16", 0, None, None),  # DeepSpeed has no fp32 accumulation for bf16 weights without ZeRO
        ("bf16", 2, "precision", None),
        ("fp16", 2, None, "fp32"),
        ("fp32", 2, None, None),
        ("fp32", 0, "fp32", None),
    ],
)
def test_grad_accum_dtype(precision: str, zero_stage: int, requested: str | None, expected: str | None) -> None:
    assert grad_accum_dtype(precision, zero_stage, requested) == expected


def spec(distributed: dict[str, Any]) -> Any:
    return tiny.a_tiny_job("model", "train.jsonl").spec({"distributed": distributed}).to_job().spec


def test_the_deepspeed_config_carries_it() -> None:
    config = deepspeed_config(spec({"precision": "bf16", "zeroStage": 2}), world=2)
    assert config["data_types"] == {"grad_accum_dtype": "fp32"}
    assert "data_types" not in deepspeed_config(spec({"precision": "bf16", "gradAccumDtype": "precision"}), world=2)


def test_fp32_accumulation_without_zero_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"gradAccumDtype: fp32.*zeroStage"):
        spec({"precision": "bf16", "zeroStage": 0, "gradAccumDtype": "fp32"})
    assert spec({"precision": "fp32", "zeroStage": 0, "gradAccumDtype": "fp32"}) is not None
