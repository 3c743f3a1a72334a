"""Batched greedy answers are the one-at-a-time answers; shards cover every example once; loss scored
at the answer positions only (evaluation and training) equals loss over all logits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer import distributed, evaluation
from kubetune.trainer.data import Example, GenerationCase
from kubetune.trainer.evaluation import (
    EvaluationSettings,
    causal_lm_loss,
    exact_match_count,
    generate_greedy,
    generate_greedy_batch,
    loss_totals,
    shard,
)
from kubetune.trainer.packing import build_sequences, collate

pytestmark = pytest.mark.timeout(120)

#: Prompts of different lengths, so that a batch of them is left-padded.
TEXTS = [
    "Map apple to",
    "Map: river\nAnswer:",
    "The quick brown fox jumps over the lazy dog. Map stone to",
    "Map cloud to green. Map tiger to piano. Map window to silver. Map garden to",
    "0123456789",
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)  # in eval mode
    return model, AutoTokenizer.from_pretrained(tiny_model)


def cpu_rank() -> distributed.Rank:
    import torch

    return distributed.Rank(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def test_batched_answers_are_the_one_at_a_time_answers(model_and_tokenizer: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer(text).input_ids for text in TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts)
    stop_ids = [tokenizer.eos_token_id]
    with torch.no_grad():
        alone = [generate_greedy(model, p, 12, stop_ids, tokenizer.pad_token_id) for p in prompts]
        # A stop token in the middle of one answer: that row finishes early while the others go on.
        early = alone[2][4]
        stop_ids.append(early)
        alone = [generate_greedy(model, p, 12, stop_ids, tokenizer.pad_token_id) for p in prompts]
        batched = generate_greedy_batch(model, prompts, 12, stop_ids, tokenizer.pad_token_id)
        reversed_batch = generate_greedy_batch(model, prompts[::-1], 12, stop_ids, tokenizer.pad_token_id)
    assert batched == alone
    assert reversed_batch[::-1] == alone
    assert len(alone[2]) < 12 and early not in alone[2] and max(len(a) for a in alone) == 12


def test_exact_match_count_batches_to_the_same_result(model_and_tokenizer: tuple[Any, Any]) -> None:
    import torch

    model, tokenizer = model_and_tokenizer
    prompts = [tokenizer(text).input_ids for text in TEXTS]
    with torch.no_grad():
        answers = [generate_greedy(model, p, 6, [tokenizer.eos_token_id], tokenizer.pad_token_id) for p in prompts]
    # Half of the expected answers are the model's own, half are not.
    targets = [tokenizer.decode(a, skip_special_tokens=True) if i % 2 else "no" for i, a in enumerate(answers)]
    cases = [GenerationCase(p, t) for p, t in zip(prompts, targets, strict=True)]
    with torch.no_grad():
        totals = [
            exact_match_count(
                model,
                tokenizer,
                cases,
                EvaluationSettings(max_new_tokens=6, generation_batch_size=size),
                cpu_rank(),
            )
            for size in (1, 2, 16)
        ]
    expected = len(cases) // 2
    assert {(t.matched, t.scored, t.tokens) for t in totals} == {(expected, len(cases), sum(map(len, answers)))}
    assert all(t.seconds > 0 for t in totals)


@pytest.mark.parametrize(("items", "world", "batch_size"), [(40, 2, 16), (21, 2, 4), (7, 3, 2), (3, 4, 8), (1, 1, 1)])
def test_shards_cover_each_item_once_in_equal_batch_counts(items: int, world: int, batch_size: int) -> None:
    values = list(range(items))
    length = {v: (v * 7) % 11 for v in values}
    shards = [shard(values, rank, world, batch_size, length.__getitem__) for rank in range(world)]
    assert len({len(batches) for batches in shards}) == 1
    assert all(0 < len(batch) <= batch_size for batches in shards for batch in batches)
    scored = sorted(v for batches in shards for batch in batches for v, weight in batch if weight > 0)
    assert scored == values
    for batches in shards:
        sizes = [len(b) for b in batches]
        assert max(sizes) - min(sizes) <= 1
        ordered = [length[v] for batch in batches for v, _ in batch]
        assert ordered == sorted(ordered)


def test_loss_at_answer_positions_equals_loss_over_all_logits(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    model, tokenizer = model_and_tokenizer
    examples = []
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        answer = len(ids) // 2
        labels = [-100] * answer + ids[answer:]
        examples.append(Example(ids, labels, truncated=False, full_length=len(ids)))
    batches = shard(examples, 0, 1, 2, lambda e: len(e.input_ids))
    with torch.no_grad():
        selected = loss_totals(model, batches, "cpu", tokenizer.pad_token_id)
        monkeypatch.setattr(evaluation, "_keeps_selected_logits", lambda model: False)
        everything = loss_totals(model, batches, "cpu", tokenizer.pad_token_id)
    assert selected.tokens == everything.tokens == sum(len(e.input_ids) - len(e.input_ids) // 2 for e in examples)
    assert selected.correct == everything.correct
    assert selected.loss_sum == pytest.approx(everything.loss_sum, rel=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_training_loss_at_labelled_positions_equals_the_models_loss(
    model_and_tokenizer: tuple[Any, Any], packed: bool
) -> None:
    import torch

    model, tokenizer = model_and_tokenizer
    examples = []
    for text in TEXTS:
        ids = tokenizer(text).input_ids
        answer = len(ids) // 2
        examples.append(Example(ids, [-100] * answer + ids[answer:], truncated=False, full_length=len(ids)))
    batch = collate(build_sequences(examples, packed, 48), tokenizer.pad_token_id, packed)
    model.train()
    try:
        losses, gradients = [], []
        for loss_of in (causal_lm_loss, lambda m, b: m(**b, use_cache=False).loss):
            torch.manual_seed(0)
            model.zero_grad()
            loss = loss_of(model, batch)
            loss.backward()
            losses.append(float(loss.detach()))
            gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    finally:
        model.zero_grad()
        model.eval()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)
