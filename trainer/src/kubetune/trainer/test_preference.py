"""DPO's loss, log-probabilities and references against independent computations (no launch)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, cast

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


WORDS = ("apple", "river", "stone", "cloud")


def _preference_training(model: Any, tokenizer: Any, train: int, words: tuple[str, ...] = WORDS) -> Any:
    from types import SimpleNamespace

    from kubetune.api.training import DpoSpec
    from kubetune.trainer.dataset import PreparedData
    from kubetune.trainer.distributed import Rank
    from kubetune.trainer.preference_training import PreferenceTraining

    records = [
        Record({"prompt": f"Map: {w}\nAnswer:", "chosen": f" {w}.", "rejected": f" {w}?"}, "p.jsonl", i)
        for i, w in enumerate([*words[:train], "field"])
    ]
    pairs = [tokenize_pair(r, tokenizer, 64) for r in records]
    data = PreparedData("preference", pairs[:-1], pairs[-1:], [], None, records[:-1], records[-1:])  # type: ignore
    engine = SimpleNamespace(module=model)
    return PreferenceTraining(DpoSpec(), engine, tokenizer, data, Rank(0, 1, 0, "cpu"))


def test_the_reference_is_scored_before_the_first_step_and_read_back_when_it_matches(
    model: Any, tokenizer: Any
) -> None:
    dpo = _preference_training(model, tokenizer, train=3)
    kept = dpo.prepare_reference(None, 2)
    train = next(values for key, values in kept.items() if key.startswith("train@"))
    assert sorted(len(values) for values in kept.values()) == [1, 3], "train and validation, under digests"
    assert all(c < 0 and r < 0 for c, r in train), "log-probabilities of real answers"
    again = _preference_training(model, tokenizer, train=3)
    assert again.prepare_reference(kept, 2, resumed_step=4) == kept, "a resumed run reads them back"
    assert again.reference["train"] is train
    legacy = {key.split("@")[0]: values for key, values in kept.items()}  # kept before digests were
    assert _preference_training(model, tokenizer, train=3).prepare_reference(legacy, 2, resumed_step=4) == kept


def test_a_resumed_run_whose_pairs_changed_is_refused_rather_than_scored_by_moved_weights(
    model: Any, tokenizer: Any
) -> None:
    from kubetune.trainer.errors import ConfigError

    kept = _preference_training(model, tokenizer, train=3).prepare_reference(None, 2)
    changed = _preference_training(model, tokenizer, train=4)
    with pytest.raises(ConfigError, match=r"checkpoint at step 6 .*train: 3 kept, 4 now.*Restore the files"):
        changed.prepare_reference(kept, 2, resumed_step=6)
    with pytest.raises(ConfigError, match=r"keeps no reference log-probabilities \(was the run started with"):
        changed.prepare_reference(None, 2, resumed_step=6)  # a checkpoint written without them
    swapped = _preference_training(model, tokenizer, train=3, words=("apple", "river", "grass"))
    with pytest.raises(ConfigError, match=r"\(train: 3 pairs, not the ones kept\)"):
        swapped.prepare_reference(kept, 2, resumed_step=6)  # as many pairs, one of them edited
    without_validation = {key: values for key, values in kept.items() if not key.startswith("validation")}
    with pytest.raises(ConfigError, match=r"\(validation: 0 kept, 1 now\)"):  # a set the checkpoint lacks
        _preference_training(model, tokenizer, train=3).prepare_reference(without_validation, 2, resumed_step=6)
    changed.prepare_reference(kept, 2, resumed_step=0)
    assert len(changed.reference["train"]) == 4, "before step 1: scored now"


def test_trls_conversational_rows_with_the_conversation_in_prompt_are_read_as_messages(
    tmp_path: Path, tokenizer: Any
) -> None:
    import json

    from kubetune.api.training import DatasetSpec
    from kubetune.trainer.dataset import prepare

    def row(word: str, conversation_in: str) -> dict[str, Any]:
        return {
            conversation_in: [{"role": "user", "content": f"Map {word}"}],
            "chosen": [{"role": "assistant", "content": f"{word}."}],
            "rejected": [{"role": "assistant", "content": f"{word}?"}],
        }

    words = ["apple", "river", "stone", "cloud", "field", "grass"]
    prepared = {}
    for field in ("prompt", "messages"):
        for split, chosen in (("train", words[:4]), ("validation", words[4:])):
            lines = [json.dumps(row(w, field)) for w in chosen]
            (tmp_path / f"{field}-{split}.jsonl").write_text("\n".join(lines) + "\n")
        spec = DatasetSpec(train=f"{field}-train.jsonl", validation=f"{field}-validation.jsonl")
        prepared[field] = prepare(spec, tmp_path, 1, tokenizer)
    trl, ours = prepared["prompt"], prepared["messages"]
    assert trl.format == "preference"
    assert trl.sequences == ours.sequences and trl.validation == ours.validation
    first = cast(Pair, trl.sequences[0])
    assert "Map apple" in tokenizer.decode(first.chosen.input_ids), "the conversation is rendered"
    bad = {"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}
    with pytest.raises(DataError, match=r"p.jsonl:2: messages\[0\].role must be one of"):
        check_record(Record(bad, "p.jsonl", 2), "preference")
