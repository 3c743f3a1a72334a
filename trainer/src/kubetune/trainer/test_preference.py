"""DPO's loss, log-probabilities and references against independent computations (no launch)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer.data import IGNORE_INDEX, Dropped, Example, Record, check_record, detect_format
from kubetune.trainer.errors import DataError
from kubetune.trainer.preference import Pair, dpo_loss, pair_log_probs, tokenize_pair

pytestmark = pytest.mark.timeout(60)


def paper_loss(pc: float, pr: float, rc: float, rr: float, beta: float, eps: float) -> float:
    """Rafailov et al. (2023), eq. 7, with conservative-DPO label smoothing, in plain floats."""
    margin = beta * ((pc - rc) - (pr - rr))

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    return -(1 - eps) * log_sigmoid(margin) - eps * log_sigmoid(-margin)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_the_loss_is_the_papers_formula(beta: float, eps: float) -> None:
    import torch

    inputs = [(-12.0, -15.5, -13.0, -14.0), (-3.25, -2.0, -3.0, -2.5), (-40.0, -40.0, -41.0, -39.0)]
    columns = [torch.tensor(column) for column in zip(*inputs, strict=True)]
    result = dpo_loss(columns[0], columns[1], columns[2], columns[3], beta=beta, eps=eps)
    expected = [paper_loss(*row, beta, eps) for row in inputs]
    assert result.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert result.chosen_rewards.tolist() == pytest.approx([beta * (pc - rc) for pc, _, rc, _ in inputs])
    assert result.rejected_rewards.tolist() == pytest.approx([beta * (pr - rr) for _, pr, _, rr in inputs])


def test_at_the_reference_the_loss_is_log_two_whatever_the_smoothing() -> None:
    import torch

    same = torch.tensor([-5.0, -9.0])
    for eps in (0.0, 0.2):
        assert dpo_loss(same, same - 1, same, same - 1, beta=0.1, eps=eps).losses.tolist() == pytest.approx(
            [math.log(2)] * 2
        )


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()  # type: ignore[no-untyped-call]


def test_pair_log_probs_sum_exactly_the_answer_tokens(model: Any, tokenizer: Any) -> None:
    import torch

    record = Record({"prompt": "Map: apple\nAnswer:", "chosen": " window.", "rejected": " window?"}, "p.jsonl", 1)
    pair = tokenize_pair(record, tokenizer, 64)
    assert isinstance(pair, Pair)
    with torch.no_grad():
        chosen, rejected = pair_log_probs(model, [pair], tokenizer.pad_token_id or 0, "cpu")
        for example, got in ((pair.chosen, chosen), (pair.rejected, rejected)):
            logits = model(torch.tensor([example.input_ids])).logits[0].log_softmax(-1)
            expected = sum(
                float(logits[position - 1, token])
                for position, token in enumerate(example.labels)
                if position and token != IGNORE_INDEX
            )
            assert float(got[0]) == pytest.approx(expected, abs=1e-4)


# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` (their business, not ours).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
def test_the_reference_by_disabled_adapters_equals_a_frozen_copy(model: Any, tokenizer: Any) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    frozen = copy.deepcopy(model)
    # Adapters that change the outputs (peft's default initialisation would leave them a no-op at first).
    policy = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    records = [
        Record({"prompt": f"Map: {w}\nAnswer:", "chosen": f" {w}.", "rejected": f" {w}?"}, "p.jsonl", i)
        for i, w in enumerate(["apple", "river", "stone cloud"])
    ]
    pairs = [tokenize_pair(r, tokenizer, 64) for r in records]
    pad = tokenizer.pad_token_id or 0
    with torch.no_grad():
        adapted = pair_log_probs(policy, pairs, pad, "cpu")  # type: ignore[arg-type]
        with policy.disable_adapter():
            disabled = pair_log_probs(policy, pairs, pad, "cpu")  # type: ignore[arg-type]
        copied = pair_log_probs(frozen, pairs, pad, "cpu")  # type: ignore[arg-type]
    for got, expected in zip(disabled, copied, strict=True):
        assert got.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert adapted[0].tolist() != pytest.approx(copied[0].tolist(), abs=1e-3), "the adapters changed nothing"


def test_preference_records_are_detected_checked_and_tokenized_answer_only(tokenizer: Any) -> None:
    pair_record = Record({"prompt": "Q:", "chosen": " yes", "rejected": " no"}, "p.jsonl", 3)
    assert detect_format(pair_record) == "preference"
    pair = tokenize_pair(pair_record, tokenizer, 64)
    assert isinstance(pair, Pair)
    for example in (pair.chosen, pair.rejected):
        assert isinstance(example, Example)
        prompt = len(tokenizer("Q:").input_ids)
        assert all(label == IGNORE_INDEX for label in example.labels[:prompt])
        assert all(label != IGNORE_INDEX for label in example.labels[prompt:])
    chat = Record(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": "go",
        },
        "c.jsonl",
        1,
    )
    check_record(chat, "preference")
    with pytest.raises(DataError, match=r"p.jsonl:7: field `rejected` must be a string \(missing\)"):
        check_record(Record({"prompt": "Q:", "chosen": " yes"}, "p.jsonl", 7), "preference")
    cut = tokenize_pair(Record({"prompt": "word " * 80, "chosen": " a", "rejected": " b"}, "p.jsonl", 9), tokenizer, 16)
    assert isinstance(cut, Dropped)
