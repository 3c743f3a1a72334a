"""Scoring a causal LM on validation data: loss, perplexity, token accuracy and greedy exact match.

A small API meant for reuse (the fine-tuned model, the untouched base model, few-shot baselines):

    totals = loss_totals(model, examples, device, batch_size)           # this rank's share
    answers = generate_greedy_batch(model, prompts, max_new_tokens, stop_ids, pad_id)  # many at once
    matched = is_exact_match(decode_answer(tokenizer, answers[0]), expected)
    result = evaluate(model, tokenizer, examples, cases, settings, rank)  # all ranks, summed

Loss and accuracy count answer tokens only (label != -100), each token weighted equally; accuracy is
the fraction of those tokens whose greedy next-token prediction is right. Every rank scores a strided
share and the sums are all-reduced. Ranks always run the same number of forward passes (a share one
short gets a weight-0 repeat), which ZeRO-3 needs because every forward gathers parameters from all
ranks.

Answers are generated in batches of `generation_batch_size` prompts: left-padded, with the attention
mask (transformers derives the position ids from it), greedy. Batching changes no answer — each is the
one the prompt gets alone (the unit test holds it to the same token ids) — but it shares every decoding
step's pass over the weights among the batch, which is most of the time of one answer on a CPU. Each
rank sorts its share by length first, so that a batch holds prompts of similar lengths (little padding).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.job import FineTuneJobSpec
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
    """Examples per forward pass (loss)."""
    synced_generation: bool = False
    """Every rank steps generation together (needed under ZeRO-3)."""
    generation_batch_size: int = 16
    """Prompts answered together (exact match): 16 shares each decoding step among many answers while
    the batch's padding and KV cache stay small."""


def settings_of(spec: FineTuneJobSpec) -> EvaluationSettings:
    """How a job's evaluations run, from its `evaluation` block (defaults when it is unset)."""
    evaluation = spec.evaluation
    batch = spec.hyperparameters.micro_batch_size
    synced = spec.distributed.zero_stage == 3
    if evaluation is None:
        return EvaluationSettings(batch_size=batch, synced_generation=synced)
    # Baselines are compared on the task metric, so they turn answer scoring on for the final model too.
    exact_match = evaluation.exact_match or evaluation.baselines is not None
    return EvaluationSettings(evaluation.max_examples, exact_match, evaluation.max_new_tokens, batch, synced)


#: The early-stopping metric's EvaluationResult field.
METRIC_FIELDS = {
    "evalLoss": "eval_loss",
    "evalPerplexity": "perplexity",
    "evalTokenAccuracy": "token_accuracy",
    "evalRewardAccuracy": "reward_accuracy",
    "evalRewardMargin": "reward_margin",
    "evalChosenReward": "chosen_reward",
    "evalRejectedReward": "rejected_reward",
}


@dataclass(frozen=True)
class LossTotals:
    """Sums over scored tokens (add them across ranks, then divide)."""

    loss_sum: float
    tokens: int
    correct: int


def shard(
    items: Sequence[Any], rank: int, world: int, batch_size: int, length: Callable[[Any], int] | None = None
) -> list[list[tuple[Any, float]]]:
    """`rank`'s strided share of `items` in batches of (item, weight), at most `batch_size` each.

    Every rank gets the same number of batches (a share one item short of the longest gets a weight-0
    repeat of the first item), and the batches of a share are as even in size as possible. With
    `length`, the share is ordered by it first, so that each batch holds items of similar lengths."""
    if not items:
        return []
    per_rank = math.ceil(len(items) / world)
    mine = [(item, 1.0) for item in items[rank::world]]
    mine += [(items[0], 0.0)] * (per_rank - len(mine))
    if length is not None:
        mine.sort(key=lambda pair: length(pair[0]))
    count = math.ceil(per_rank / batch_size)
    size, larger = divmod(per_rank, count)
    batches, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < larger else 0)
        batches.append(mine[start:end])
        start = end
    return batches


def loss_totals(model: Any, batches: list[list[tuple[Example, float]]], device: Any, pad_id: int) -> LossTotals:
    """Token cross-entropy sum, scored tokens and correctly predicted tokens of this rank's batches.

    Logits are computed only at the positions that predict a scored token (`logits_to_keep`, where the
    model takes it): projecting every prompt position onto the vocabulary would add a fifth or more to
    each forward pass of a small model, for nothing."""
    import torch

    selective = _keeps_selected_logits(model)
    totals = LossTotals(0.0, 0, 0)
    for batch in batches:
        inputs = collate([single(example, 0) for example, _ in batch], pad_id, packed=False)
        weights = torch.tensor([weight for _, weight in batch], device=device)
        labels = inputs.pop("labels").to(device)[:, 1:]  # position p predicts token p + 1
        wanted = ((labels != IGNORE_INDEX) & (weights[:, None] > 0)).any(dim=0)
        # At least one position: under ZeRO-3 every rank must run each forward, even for nothing.
        positions = wanted.nonzero().flatten() if bool(wanted.any()) else torch.tensor([0], device=device)
        arguments = {k: v.to(device) for k, v in inputs.items()}
        if selective:
            logits = model(**arguments, logits_to_keep=positions).logits.float()
        else:
            logits = model(**arguments).logits.float()[:, positions, :]
        totals = _add(totals, logits, labels[:, positions], weights)
    return totals


def _add(totals: LossTotals, logits: Any, targets: Any, weights: Any) -> LossTotals:
    """`totals` plus the loss, count and correct predictions of `logits` (batch, positions, vocabulary)
    for `targets` (batch, positions), in rows of weight > 0."""
    import torch.nn.functional as F

    scored = (targets != IGNORE_INDEX) & (weights[:, None] > 0)
    losses = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return LossTotals(
        totals.loss_sum + float((losses * scored).sum()),
        totals.tokens + int(scored.sum()),
        totals.correct + int(((logits.argmax(-1) == targets) & scored).sum()),
    )


def _keeps_selected_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs; peft and DeepSpeed
    pass it on)."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def causal_lm_loss(model: Any, batch: dict[str, Any]) -> Any:
    """`model(**batch).loss` — the mean next-token cross-entropy over the labelled tokens of `batch`
    (input_ids, labels, attention_mask or position_ids) — with the logits computed only at the positions
    that predict a labelled token of some row.

    Most tokens of a chat or prompt-completion example are its prompt, which has no loss; projecting
    every position onto the vocabulary and back is about a sixth of a small model's training step on a
    CPU. The model's own loss function still computes the loss (`shift_labels`: the targets of the kept
    positions), so whatever it adds (an auxiliary loss) stays."""
    import torch.nn.functional as F

    if not _keeps_selected_logits(model):
        return model(**batch, use_cache=False).loss
    labels = batch["labels"]
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # position p predicts token p + 1
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    return model(**batch, logits_to_keep=positions, shift_labels=targets[:, positions], use_cache=False).loss


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
    return generate_greedy_batch(model, [prompt_ids], max_new_tokens, stop_ids, pad_id, device, synced)[0]


def generate_greedy_batch(
    model: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    device: Any = "cpu",
    synced: bool = False,
) -> list[list[int]]:
    """The greedy continuation of each prompt (new tokens only, stop token excluded), generated in one
    batch: prompts left-padded with `pad_id` and masked, so each answer is the one it gets alone."""
    import torch

    if not prompts:
        return []
    width = max(len(prompt) for prompt in prompts)
    inputs = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    output = model.generate(
        input_ids=inputs,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
        synced_gpus=synced,
    )
    return [_until_stop(row[width:].tolist(), stop_ids) for row in output]


def _until_stop(new: list[int], stop_ids: list[int]) -> list[int]:
    """Generated tokens up to the first stop token (finished rows of a batch are padded after it)."""
    for index, token in enumerate(new):
        if token in stop_ids:
            return new[:index]
    return new


def padding_id(tokenizer: Any) -> int:
    """The tokenizer's padding token, or its end-of-sequence token when it has none (padding is masked)."""
    pad: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pad


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
    """Wall time spent generating the scored answers (each its equal share of its batch's time)."""
    tokens: int = 0
    """Tokens generated for the scored answers."""


def exact_match_count(
    model: Any, tokenizer: Any, cases: list[GenerationCase], settings: EvaluationSettings, rank: distributed.Rank
) -> GenerationTotals:
    """Exact matches, answers, generation time and generated tokens over this rank's share of `cases`.

    A batch's wall time is shared equally among its prompts, so `seconds / scored` is the mean time per
    answer at this batch size (what serving the answers in such batches costs), not one prompt's latency
    alone."""
    stop_ids, pad_id = stop_token_ids(tokenizer, model), padding_id(tokenizer)
    matched = scored = tokens = 0
    seconds = 0.0
    batches = shard(cases, rank.rank, rank.world, settings.generation_batch_size, lambda c: len(c.prompt_ids))
    for batch in batches:
        began = time.perf_counter()
        answers = generate_greedy_batch(
            model,
            [case.prompt_ids for case, _ in batch],
            settings.max_new_tokens,
            stop_ids,
            pad_id,
            rank.device,
            synced=settings.synced_generation,
        )
        share = (time.perf_counter() - began) / len(batch)
        for (case, weight), answer in zip(batch, answers, strict=True):
            if weight > 0:
                seconds += share
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
            batches = shard(examples, rank.rank, rank.world, settings.batch_size, lambda e: len(e.input_ids))
            totals = loss_totals(model, batches, rank.device, padding_id(tokenizer))
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
        # Per process: each rank answers its share in parallel, so the mean time of one answer is the
        # summed generation time over the answers (a batch's time shared among its answers), and the
        # rate is one process's.
        latency_seconds=seconds / scored if scored else None,
        tokens_per_second=new_tokens / seconds if seconds else None,
    )
