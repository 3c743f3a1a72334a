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
_LORA_B = re.compile(r"\.lora_B\.[^.]+\.weight$")
_PEFT_ROOT = "base_model.model."


class ShardedLoading:
    """Holds transformers' ZeRO-3 config (it keeps only a weak reference) while the model is loaded and
    trained; `None`-like below stage 3."""

    def __init__(self, ds_config: dict[str, Any], zero_stage: int) -> None:
        self.config: Any = None
        if zero_stage == 3:
            from transformers.integrations.deepspeed import HfDeepSpeedConfig

            self.config = HfDeepSpeedConfig(ds_config)  # type: ignore[no-untyped-call]


def gathered_state_dict(module: Any, is_main: bool, trainable_only: bool = False) -> dict[str, Any] | None:
    """The module's full state dict on rank 0's CPU (None on the other ranks), gathering one partitioned
    parameter at a time; `trainable_only`: the parameters being trained alone (a LoRA adapter exported
    without its base model gathers nothing else). Every rank must call it (each gather is a collective;
    `requires_grad` is the same on every rank, so every rank gathers the same parameters in the same order)."""
    import deepspeed

    keys = set(module.state_dict().keys())
    state: dict[str, Any] = {}
    for name, parameter in module.named_parameters():
        if trainable_only and not parameter.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([parameter], modifier_rank=None):
            if is_main and name in keys:
                state[name] = parameter.detach().to("cpu", copy=True)
    if not is_main:
        return None
    if not trainable_only:
        for name, buffer in module.named_buffers():
            if name in keys:
                state[name] = buffer.detach().to("cpu", copy=True)
    return state


def _lora_layers(peft_model: Any, state: dict[str, Any]) -> dict[str, tuple[str, str, float, bool]]:
    """Per base weight key: (A key, B key, scaling, fan_in_fan_out) of the LoRA Linear layer on it. Anything
    this merge cannot do is refused with a ModelError naming the layer (`lora.merge: false` exports it)."""
    from peft.tuners.lora import Linear

    modules = dict(peft_model.named_modules())
    layers = {}
    for key in state:
        match = _LORA_A.match(key)
        if match is None:
            if "lora_" in key and not _LORA_B.search(key):  # e.g. an Embedding's lora_embedding_A
                raise ModelError(f"cannot merge {key} under ZeRO-3 (only Linear layers): set lora.merge false")
            continue
        prefix, adapter = match["prefix"], match["adapter"]
        layer = modules.get(prefix)
        if not isinstance(layer, Linear) or layer.use_dora.get(adapter):
            raise ModelError(f"cannot merge the LoRA adapter of {prefix} under ZeRO-3 (only plain Linear layers): "
                             "set lora.merge false")  # fmt: skip
        base = f"{prefix}.base_layer.weight"
        if base not in state:  # a tied weight (e.g. lm_head on the embeddings) is exported under its other name
            raise ModelError(f"cannot merge the LoRA adapter of {prefix} under ZeRO-3: its weight is tied to "
                             "another; leave it out of lora.targetModules or set lora.merge false")  # fmt: skip
        layers[base] = (key, f"{prefix}.lora_B.{adapter}.weight", float(layer.scaling[adapter]), layer.fan_in_fan_out)
    return layers


def merged_lora_state_dict(peft_model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The base model's state dict with every LoRA adapter merged in (W + B·A·scaling), from a peft model's
    full state dict on the CPU, one layer at a time (at most one delta exists at once; each original is
    dropped as its merged copy is made); the keys are the base model's own (what `merge_and_unload` saves).
    `state` is consumed."""
    layers = _lora_layers(peft_model, state)
    adapters = {key for a_key, b_key, _, _ in layers.values() for key in (a_key, b_key)}
    merged: dict[str, Any] = {}
    for key in list(state):
        if key in adapters:
            continue
        value = state.pop(key)
        if key in layers:
            a_key, b_key, scaling, fan_in_fan_out = layers[key]
            delta = (state[b_key].float() @ state[a_key].float()) * scaling
            value = (value.float() + (delta.T if fan_in_fan_out else delta)).to(value.dtype)
        merged[key.removeprefix(_PEFT_ROOT).replace(".base_layer.", ".")] = value
    return merged
