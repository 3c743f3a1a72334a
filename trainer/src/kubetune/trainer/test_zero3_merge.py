"""The ZeRO-3 export's LoRA merge on CPU copies equals peft's own merge_and_unload, and what it cannot merge
is refused by name (the 2-rank ZeRO-3 runs are tests/slow/trainer/test_zero3.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kubetune.trainer.errors import ModelError
from kubetune.trainer.zero3 import merged_lora_state_dict

# peft 0.21 calls transformers' deprecated is_gradient_checkpointing (a FutureWarning, not ours)
# (peft warns, rightly, that an adapter on a tied layer complicates merging: the case refused below)
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning"),
]


def tiny_lora(targets: list[str], tie: bool = True, fan_in_fan_out: bool = False) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type=TaskType.CAUSAL_LM)
    model = get_peft_model(LlamaForCausalLM(config), lora)
    with torch.no_grad():  # B starts at zero: make the adapters do something
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                parameter.normal_(std=0.5)
    return model


def test_the_merge_equals_peft_merge_and_unload() -> None:
    model = tiny_lora(["q_proj", "v_proj", "down_proj"])
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    state |= {name: b.detach().clone() for name, b in model.named_buffers() if name in model.state_dict()}
    merged = merged_lora_state_dict(model, state)
    expected = model.merge_and_unload().state_dict()
    assert not any("lora_" in key or "base_layer" in key for key in merged)
    assert set(merged) == {key for key in expected if key != "lm_head.weight"}  # tied: saved once
    for key, value in merged.items():
        assert torch.allclose(value, expected[key], atol=1e-6), key
    assert state and all("lora_" in key for key in state), "the originals are consumed as their merged copies are made"


@pytest.mark.parametrize(
    ("targets", "tie", "refusal"),
    [
        (["embed_tokens"], False, "only Linear"),  # an Embedding adapter
        (["lm_head"], True, "tied"),  # lm_head shares the embeddings' weight
    ],
)
def test_what_cannot_be_merged_is_refused_by_name(targets: list[str], tie: bool, refusal: str) -> None:
    model = tiny_lora(targets, tie)
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ModelError, match=refusal) as raised:
        merged_lora_state_dict(model, state)
    assert "lora.merge false" in str(raised.value)
