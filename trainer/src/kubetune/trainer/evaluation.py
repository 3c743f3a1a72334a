"""Scoring a causal LM on validation data: loss, perplexity, token accuracy and greedy exact match.

A small API meant for reuse (the fine-tuned model, the untouched base model, few-shot baselines):

    totals = loss_totals(model, examples, device, batch_size)           # this rank's share
    answer = generate_greedy(model, prompt_ids, max_new_tokens, stop_ids, pad_id)
    matched = is_exact_match(decode_answer(tokenizer, answer), expected)
    result = evaluate(model, tokenizer, examples, cases, settings, rank)  # all ranks, summed

Loss and accuracy count answer tokens only (label != -100), each token weighted equally; accuracy is
the fraction of those tokens whose greedy next-token prediction is right. Every rank scores a strided
share and the sums are all-reduced. Ranks always run the same number of forward passes (short shares
are padded with weight-0 repeats), which ZeRO-3 needs because every forward gathers parameters from
all ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.status import EvaluationResult
from kubetune.trainer import distributed
from kubetune.trainer.data import IGNORE_INDEX, Example, GenerationCase
from kubetune.trainer.packing import collate, single

#: End-of-turn tokens of common chat templates: generation also stops there, whatever the model's
#: generation config says (a base model's often names only its end-of-text token).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass(frozen=True)
class EvaluationSettings:
    """How to evaluate (from the spec's `evaluation` block; defaults when it is unset)."""

    max_examples: int | None = None
    """Score at most this many validation examples (the first ones)."""
    exact_match: bool = False
    """Also generate answers greedily and score exact match."""
    max_new_tokens: int = 32
    """Longest generated answer in tokens."""
    batch_size: int = 4
    """Examples per forward pass."""
    synced_generation: bool = False
    """Every rank steps generation together (needed under ZeRO-3)."""


@dataclass(frozen=True)
class LossTotals:
    """Sums over scored tokens (add them across ranks, then divide)."""

    loss_sum: float
    tokens: int
    correct: int


def shard(items: Sequence[Any], rank: int, world: int, batch_size: int) -> list[list[tuple[Any, float]]]:
    """`rank`'s strided share of `items` in batches of (item, weight); every rank gets the same number
    of batches, short ones padded with weight-0 repeats of the first item."""
    if not items:
        return []
    mine = list(items[rank::world])
    per_rank = math.ceil(len(items) / world)
    batches = math.ceil(per_rank / batch_size)
    padded = [(item, 1.0) for item in mine] + [(items[0], 0.0)] * (batches * batch_size - len(mine))
    return [padded[i * batch_size : (i + 1) * batch_size] for i in range(batches)]


def loss_totals(model: Any, batches: list[list[tuple[Example, float]]], device: Any, pad_id: int) -> LossTotals:
    """Token cross-entropy sum, scored tokens and correctly predicted tokens of this rank's batches."""
    import torch
    import torch.nn.functional as F

    loss_sum, tokens, correct = 0.0, 0, 0
    for batch in batches:
        inputs = collate([single(example, 0) for example, _ in batch], pad_id, packed=False)
        weights = torch.tensor([weight for _, weight in batch], device=device)
        labels = inputs.pop("labels").to(device)
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
        logits, labels = logits[:, :-1, :], labels[:, 1:]
        scored = (labels != IGNORE_INDEX) & (weights[:, None] > 0)
        losses = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        loss_sum += float((losses * scored).sum())
        tokens += int(scored.sum())
        correct += int(((logits.argmax(-1) == labels) & scored).sum())
    return LossTotals(loss_sum, tokens, correct)


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Token ids that end a generated answer: EOS, the model's configured ones, end-of-turn markers."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    vocabulary = tokenizer.get_vocab()
    ids |= {vocabulary[token] for token in END_OF_TURN_TOKENS if token in vocabulary}
    return sorted(i for i in ids if i is not None)


def generate_greedy(
    model: Any,
    prompt_ids: list[int],
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    device: Any = "cpu",
    synced: bool = False,
) -> list[int]:
    """The greedy continuation of `prompt_ids` (new tokens only, stop token excluded)."""
    import torch

    inputs = torch.tensor([prompt_ids], device=device)
    output = model.generate(
        input_ids=inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
        synced_gpus=synced,
    )
    new: list[int] = output[0, len(prompt_ids) :].tolist()
    for index, token in enumerate(new):
        if token in stop_ids:
            return new[:index]
    return new


def decode_answer(tokenizer: Any, ids: list[int]) -> str:
    text: str = tokenizer.decode(ids, skip_special_tokens=True)
    return text


def is_exact_match(prediction: str, expected: str) -> bool:
    """Exact match after trimming surrounding whitespace on both sides."""
    return prediction.strip() == expected.strip()


@dataclass(frozen=True)
class GenerationTotals:
    """Sums over this rank's generated answers (add across ranks)."""

    matched: int = 0
    scored: int = 0
    seconds: float = 0.0
    """Wall time spent generating the scored answers."""
    tokens: int = 0
    """Tokens generated for the scored answers."""


def exact_match_count(
    model: Any, tokenizer: Any, cases: list[GenerationCase], settings: EvaluationSettings, rank: distributed.Rank
) -> GenerationTotals:
    """Exact matches, answers, generation time and generated tokens over this rank's share of `cases`."""
    stop_ids = stop_token_ids(tokenizer, model)
    matched = scored = tokens = 0
    seconds = 0.0
    for batch in shard(cases, rank.rank, rank.world, 1):
        case, weight = batch[0]
        began = time.perf_counter()
        answer = generate_greedy(
            model,
            case.prompt_ids,
            settings.max_new_tokens,
            stop_ids,
            tokenizer.pad_token_id,
            rank.device,
            synced=settings.synced_generation,
        )
        if weight > 0:
            seconds += time.perf_counter() - began
            scored += 1
            tokens += len(answer)
            matched += is_exact_match(decode_answer(tokenizer, answer), case.target)
    return GenerationTotals(matched, scored, seconds, tokens)


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    cases: list[GenerationCase],
    settings: EvaluationSettings,
    rank: distributed.Rank,
) -> EvaluationResult:
    """Score `model` on the first `max_examples` examples; call on every rank (results are global)."""
    import torch

    examples = examples[: settings.max_examples]
    cases = cases[: settings.max_examples]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batches = shard(examples, rank.rank, rank.world, settings.batch_size)
            totals = loss_totals(model, batches, rank.device, tokenizer.pad_token_id)
            generated = GenerationTotals()
            if settings.exact_match and cases:
                generated = exact_match_count(model, tokenizer, cases, settings, rank)
    finally:
        model.train(was_training)
    g = generated
    loss_sum, tokens, correct, matched, scored, seconds, new_tokens = distributed.all_reduce_sum(
        [totals.loss_sum, totals.tokens, totals.correct, g.matched, g.scored, g.seconds, g.tokens], rank.device
    )
    loss = loss_sum / tokens if tokens else math.nan
    return EvaluationResult(
        eval_loss=loss,
        perplexity=math.exp(min(loss, 700.0)) if math.isfinite(loss) else None,
        token_accuracy=correct / tokens if tokens else None,
        exact_match=matched / scored if scored else None,
        examples=len(examples),
        # Per process: each rank answers its share in parallel, so the mean latency of one answer is the
        # summed generation time over the answers, and the rate is one process's.
        latency_seconds=seconds / scored if scored else None,
        tokens_per_second=new_tokens / seconds if seconds else None,
    )
