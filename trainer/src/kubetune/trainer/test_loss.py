"""Exact loss weighting: the same data split any way over micro-batches and ranks gives the same loss and
gradients (as TRL tests it), with DeepSpeed's averaging over ranks emulated; and the chunked path equals
the model's own loss, with LoRA and tied embeddings too. The same invariance through real DeepSpeed
runs is tested in tests/slow/trainer."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kubetune.trainer.loss import backward_scale, chunked_head, token_loss_sum, trained_tokens
from kubetune.trainer.packing import Sequence, collate

VOCABULARY = 61


def tiny_llama(tied: bool = True, **extra: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCABULARY,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        pad_token_id=0,
        **extra,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def chat_like(index: int) -> Sequence:
    """A prompt (no loss) and an answer whose length varies a lot between examples, as chat data does."""
    prompt, answer = 3 + (index * 5) % 11, 1 + (index * 7) % 13
    ids = [1 + (index * 31 + position * 17) % (VOCABULARY - 1) for position in range(prompt + answer)]
    return Sequence(ids, [-100] * prompt + ids[prompt:], list(range(len(ids))), (index,))


DATA = [chat_like(i) for i in range(8)]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [([5, 6, 7], 2), ([-100, -100, 7, 8], 2), ([9, -100, -100], 0), ([4], 0), ([-100, 3, -100, 4], 2)],
)
def test_trained_tokens_are_labels_after_the_first_position(labels: list[int], expected: int) -> None:
    sequence = Sequence(list(range(len(labels))), labels, list(range(len(labels))), (0,))
    assert trained_tokens([sequence, sequence]) == 2 * expected


@pytest.mark.parametrize(("world", "tokens", "expected"), [(1, 40, 1 / 40), (2, 40, 2 / 40), (4, 10, 0.4), (2, 0, 0.0)])
def test_backward_scale_undoes_deepspeeds_mean_over_ranks(world: int, tokens: int, expected: float) -> None:
    assert backward_scale(world, tokens) == pytest.approx(expected)


def reference(model: Any) -> tuple[float, list[torch.Tensor]]:
    """All 8 sequences in one batch, the loss written out by hand: sum of token losses / trained tokens."""
    batch = collate(DATA, 0, packed=False)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets = F.pad(batch["labels"][:, 1:], (0, 1), value=-100)
    loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
    loss = loss / (targets != -100).sum()
    model.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def split_run(model: Any, world: int, micro: int, head: Any) -> tuple[float, list[torch.Tensor]]:
    """One optimizer step the way the loop runs it, every rank in turn; gradients averaged over ranks as
    DeepSpeed's reduction does. Micro-batch k of rank r holds what BatchPlan gives it."""
    accumulation = len(DATA) // (world * micro)
    plan = [
        [DATA[k * world * micro + r * micro : k * world * micro + (r + 1) * micro] for k in range(accumulation)]
        for r in range(world)
    ]
    step_tokens = sum(trained_tokens(m) for rank in plan for m in rank)  # the all-reduced count
    scale = backward_scale(world, step_tokens)
    summed, per_rank = 0.0, []
    for batches in plan:
        model.zero_grad()
        for sequences in batches:
            loss = token_loss_sum(model, collate(sequences, 0, packed=False), head)
            (loss * scale).backward()
            summed += float(loss.detach())
        per_rank.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    averaged = [torch.stack(grads).mean(dim=0) for grads in zip(*per_rank, strict=True)]
    return summed / step_tokens, averaged


SPLITS = [(1, 8), (1, 4), (1, 1), (2, 4), (2, 1)]
"""(ranks, micro-batch size) over the same 8 sequences: 1 of 8, 2 of 4, 8 of 1, and 2 ranks."""


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "model-loss"])
@pytest.mark.parametrize(("world", "micro"), SPLITS)
def test_any_split_gives_the_loss_and_gradients_of_one_batch(world: int, micro: int, chunked: bool) -> None:
    model = tiny_llama()
    head = chunked_head(model, zero_stage=2) if chunked else None
    assert (head is not None) == chunked
    expected_loss, expected = reference(model)
    loss, grads = split_run(model, world, micro, head)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_mean_per_micro_batch_would_not() -> None:
    """What the loop did before: each micro-batch's mean loss, averaged over accumulation and ranks."""
    model = tiny_llama()
    _, expected = reference(model)
    model.zero_grad()
    for sequences in ([s] for s in DATA):
        batch = collate(sequences, 0, packed=False)
        (model(**batch).loss / len(DATA)).backward()
    difference = max(float((p.grad - want).abs().max()) for p, want in zip(model.parameters(), expected, strict=True))
    assert difference > 1e-3


# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` (their business, not ours).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("target_head", [False, True], ids=["lora", "lora-on-the-head"])
def test_lora_the_chunked_loss_equals_the_models_own(target_head: bool) -> None:
    from peft import LoraConfig, get_peft_model

    modules = ["q_proj", "v_proj", "down_proj"] + (["lm_head"] if target_head else [])
    model = get_peft_model(tiny_llama(tied=False), LoraConfig(r=4, lora_alpha=8, target_modules=modules))
    head = chunked_head(model, zero_stage=2)
    # An adapter on the head changes its output: then the model's own loss is used.
    assert (head is None) == target_head
    batch = collate(DATA[:4], 0, packed=False)
    results = []
    for path in (head, None):
        model.zero_grad()
        loss = token_loss_sum(model, batch, path)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((float(loss.detach()), grads))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for got, want in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("case", "chunked"),
    [("plain", True), ("zero-3", False), ("head bias", False), ("soft-capping", False), ("router loss", False)],
)
def test_the_chunked_loss_only_where_it_equals_the_models(case: str, chunked: bool) -> None:
    model = tiny_llama()
    if case == "head bias":
        model.lm_head = torch.nn.Linear(16, VOCABULARY, bias=True)
    if case == "soft-capping":
        model.config.final_logit_softcapping = 30.0
    if case == "router loss":
        model.config.output_router_logits = True
    assert (chunked_head(model, zero_stage=3 if case == "zero-3" else 2) is not None) == chunked
