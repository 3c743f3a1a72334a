"""Packing, batching and the data order — no training, no launch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer.data import IGNORE_INDEX, Example
from kubetune.trainer.packing import BatchPlan, collate, pack, single

pytestmark = pytest.mark.timeout(60)


def example(ids: list[int], learned_from: int = 0) -> Example:
    labels = [IGNORE_INDEX] * learned_from + ids[learned_from:]
    return Example(ids, labels, truncated=False, full_length=len(ids))


def test_pack_keeps_examples_whole_and_restarts_positions() -> None:
    examples = [example([5, 6, 7]), example([8, 9], learned_from=1), example([10, 11, 12, 13]), example([14])]
    packs = pack(examples, max_length=6)
    assert [p.example_ids for p in packs] == [(0, 1), (2, 3)]
    assert packs[0].input_ids == [5, 6, 7, 8, 9]
    assert packs[0].position_ids == [0, 1, 2, 0, 1]
    # The first token of each example is never a target: no loss predicts one example from another.
    assert packs[0].labels == [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]
    assert packs[1].position_ids == [0, 1, 2, 3, 0]
    assert all(len(p.input_ids) <= 6 for p in packs)


def test_collate_pads_right_and_masks_padding() -> None:
    batch = collate([single(example([1, 2, 3]), 0), single(example([4]), 1)], pad_id=0, packed=False)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    packed = collate(pack([example([1, 2]), example([3])], 8), pad_id=0, packed=True)
    assert packed["position_ids"].tolist() == [[0, 1, 0]] and "attention_mask" not in packed


def test_packed_examples_do_not_attend_to_each_other(tiny_model: Path) -> None:
    """The logits of an example packed after another equal its logits alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.eval()
    first, second = example(list(range(10, 22))), example(list(range(40, 47)))
    packed = collate(pack([first, second], 64), pad_id=0, packed=True)
    packed.pop("labels")
    with torch.no_grad():
        together = model(**packed, use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0] for e in (first, second)]
    assert torch.allclose(together[:12], alone[0], atol=1e-5)
    assert torch.allclose(together[12:], alone[1], atol=1e-5)
    # Without restarting positions the second example would see the first: the check can fail.
    flat = torch.tensor([first.input_ids + second.input_ids])
    with torch.no_grad():
        leaky = model(input_ids=flat, use_cache=False).logits[0]
    assert not torch.allclose(leaky[12:], alone[1], atol=1e-3)


@pytest.mark.parametrize(("items", "world", "micro", "accumulation"), [(160, 2, 4, 1), (50, 2, 3, 2), (7, 1, 2, 3)])
def test_each_epoch_sees_every_sequence_at_most_once(items: int, world: int, micro: int, accumulation: int) -> None:
    plan = BatchPlan(items, world, micro, accumulation, seed=5)
    assert plan.steps_per_epoch == items // (world * micro * accumulation)
    for epoch in range(2):
        seen: Counter[int] = Counter()
        for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch):
            for rank in range(world):
                batches = plan.micro_batches(step, rank)
                assert len(batches) == accumulation and all(len(b) == micro for b in batches)
                seen.update(i for b in batches for i in b)
        assert max(seen.values()) == 1
        assert sum(seen.values()) == plan.steps_per_epoch * plan.global_batch


def test_the_order_depends_only_on_seed_epoch_step_and_rank() -> None:
    plan = BatchPlan(160, 2, 4, 1, seed=5)
    again = BatchPlan(160, 2, 4, 1, seed=5)
    assert [again.micro_batches(s, 1) for s in range(25)] == [plan.micro_batches(s, 1) for s in range(25)]
    assert plan.order(0) != plan.order(1)
    assert BatchPlan(160, 2, 4, 1, seed=6).order(0) != plan.order(0)
    assert plan.total_steps(epochs=3, max_steps=None) == 60 and plan.total_steps(3, max_steps=7) == 7
    assert plan.epoch_at(30) == 1.5
