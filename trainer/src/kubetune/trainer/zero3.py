"""ZeRO-3: loading the model already sharded, and exporting it one parameter at a time.

Under ZeRO-3 every parameter is split across the ranks. Two things then go wrong in a naive trainer:

- loading: `from_pretrained` on each of the P processes of a pod builds the whole model in host
  memory before DeepSpeed partitions it (P full copies). transformers loads straight into shards when
  a `HfDeepSpeedConfig` with stage 3 is alive during `from_pretrained` (it then runs inside
  `deepspeed.zero.Init`); `sharded_loading` keeps one alive for as long as the model lives.
- export: gathering every parameter at once (`GatheredParameters(model.parameters())`) puts the whole
  model on every device: out of memory for exactly the models ZeRO-3 is for. `gathered_state_dict`
  gathers one parameter at a time and keeps it only on rank 0's CPU; LoRA adapters are merged into
  those CPU copies (`merged_lora_state_dict`), never on the device.
"""

from __future__ import annotations

import re
from typing import Any

from kubetune.trainer.errors import ModelError

#: peft's key parts: `<prefix>.lora_A.<adapter>.weight`, `<prefix>.base_layer.weight`.
_LORA_A = re.compile(r"^(?P<prefix>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")
_PEFT_ROOT = "base_model.model."


class ShardedLoading:
    """Holds transformers' ZeRO-3 config (it keeps only a weak reference) while the model is loaded and
    trained; `None`-like below stage 3."""

    def __init__(self, ds_config: dict[str, Any], zero_stage: int) -> None:
        self.config: Any = None
        if zero_stage == 3:
            from transformers.integrations.deepspeed import HfDeepSpeedConfig

            self.config = HfDeepSpeedConfig(ds_config)  # type: ignore[no-untyped-call]


def gathered_state_dict(module: Any, is_main: bool) -> dict[str, Any] | None:
    """The module's full state dict on rank 0's CPU (None on the other ranks), gathering one partitioned
    parameter at a time. Every rank must call it (each gather is a collective)."""
    import deepspeed

    keys = set(module.state_dict().keys())
    state: dict[str, Any] = {}
    for name, parameter in module.named_parameters():
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=None):
            if is_main and name in keys:
                state[name] = parameter.detach().to("cpu", copy=True)
    if not is_main:
        return None
    for name, buffer in module.named_buffers():
        if name in keys:
            state[name] = buffer.detach().to("cpu", copy=True)
    return state


def merged_lora_state_dict(peft_model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The base model's state dict with every LoRA adapter merged in (W + B·A·scaling), from a peft model's
    full state dict on the CPU; the keys are the base model's own (what `merge_and_unload` would save)."""
    modules = dict(peft_model.named_modules())
    merged: dict[str, Any] = {}
    lora_keys: set[str] = set()
    deltas: dict[str, Any] = {}
    for key, a_weight in state.items():
        match = _LORA_A.match(key)
        if match is None:
            continue
        prefix, adapter = match["prefix"], match["adapter"]
        layer = modules.get(prefix)
        if layer is None or getattr(layer, "use_dora", {}).get(adapter):
            raise ModelError(
                f"cannot merge the LoRA adapter of {prefix} (DoRA or an unknown layer): set lora.merge false"
            )
        b_key = f"{prefix}.lora_B.{adapter}.weight"
        delta = (state[b_key].float() @ a_weight.float()) * float(layer.scaling[adapter])
        if getattr(layer, "fan_in_fan_out", False):
            delta = delta.T
        deltas[f"{prefix}.base_layer.weight"] = delta
        lora_keys |= {key, b_key}
    for key, value in state.items():
        if key in lora_keys:
            continue
        if key in deltas:
            value = (value.float() + deltas[key]).to(value.dtype)
        merged[key.removeprefix(_PEFT_ROOT).replace(".base_layer.", ".")] = value
    return merged
