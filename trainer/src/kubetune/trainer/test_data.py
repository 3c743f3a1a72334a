"""Reading, checking and tokenizing datasets, and the data report — no training, no launch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.training import DatasetSpec
from kubetune.trainer import report as reports
from kubetune.trainer.data import IGNORE_INDEX, Record, generation_case, read_records, tokenize_record
from kubetune.trainer.dataset import held_out_split, prepare
from kubetune.trainer.errors import DataError
from tests.support import tiny

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def record(fields: dict[str, Any]) -> Record:
    return Record(fields, "train.jsonl", 1)


def pieces(tokenizer: Any, parts: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Token ids and expected labels built piece by piece: (text, learned)."""
    ids: list[int] = []
    labels: list[int] = []
    for text, learned in parts:
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids += piece
        labels += piece if learned else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_chat_masks_exactly_the_non_assistant_tokens(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "You map words."},
        {"role": "user", "content": "apple"},
        {"role": "assistant", "content": "window"},
        {"role": "user", "content": "river stone"},
        {"role": "assistant", "content": "copper, silver!"},
    ]
    example = tokenize_record(record({"messages": messages}), "chat", tokenizer, 256, train_on_inputs=False)
    assert example is not None
    # ChatML, written out by hand: each turn is `<|im_start|>role\n` + content + `<|im_end|>\n`; an
    # assistant turn's content, `<|im_end|>` and newline are learned, everything else is not.
    parts: list[tuple[str, bool]] = []
    for message in messages:
        learned = message["role"] == "assistant"
        parts += [(f"<|im_start|>{message['role']}\n", False), (message["content"], learned)]
        parts += [("<|im_end|>", learned), ("\n", learned)]
    ids, labels = pieces(tokenizer, parts)
    assert example.input_ids == ids
    for position, (got, expected) in enumerate(zip(example.labels, labels, strict=True)):
        token = tokenizer.convert_ids_to_tokens(ids[position])
        assert got == expected, f"token {position} {token!r}: label {got}, expected {expected}"


def test_chat_with_train_on_inputs_learns_everything(tokenizer: Any) -> None:
    messages = tiny.record("chat", "apple", "window")["messages"]
    example = tokenize_record(record({"messages": messages}), "chat", tokenizer, 256, train_on_inputs=True)
    assert example is not None and example.labels == example.input_ids


def test_prompt_completion_learns_the_completion_and_eos(tokenizer: Any) -> None:
    fields = {"prompt": "Map: apple\nAnswer:", "completion": " window"}
    example = tokenize_record(record(fields), "prompt-completion", tokenizer, 256, train_on_inputs=False)
    prompt = tokenizer(fields["prompt"]).input_ids
    completion = [*tokenizer(fields["completion"], add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    assert example is not None
    assert example.input_ids == prompt + completion
    assert example.labels == [IGNORE_INDEX] * len(prompt) + completion
    everything = tokenize_record(record(fields), "prompt-completion", tokenizer, 256, train_on_inputs=True)
    assert everything is not None and everything.labels == everything.input_ids


def test_text_learns_every_token_and_ends_with_eos(tokenizer: Any) -> None:
    example = tokenize_record(record({"text": "Map: apple"}), "text", tokenizer, 256, False)
    assert example is not None and example.labels == example.input_ids
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_truncation_is_counted_and_nothing_left_to_learn_drops(tokenizer: Any) -> None:
    long = tokenize_record(record({"text": "apple river stone cloud " * 10}), "text", tokenizer, 16, False)
    assert long is not None and long.truncated and len(long.input_ids) == 16 and long.full_length > 16
    fields = {"prompt": "Map: apple river stone cloud green\nAnswer:", "completion": " window"}
    assert tokenize_record(record(fields), "prompt-completion", tokenizer, 8, False) is None


def test_generation_cases(tokenizer: Any) -> None:
    chat = tiny.record("chat", "apple", "window")
    case = generation_case(record(chat), "chat", tokenizer)
    assert case is not None and case.target == "window"
    assert tokenizer.decode(case.prompt_ids).endswith("<|im_start|>assistant\n")
    pc = generation_case(record({"prompt": "Q:", "completion": " A "}), "prompt-completion", tokenizer)
    assert pc is not None and pc.target == "A"
    assert generation_case(record({"text": "x"}), "text", tokenizer) is None


@pytest.mark.parametrize(
    ("lines", "fmt", "message"),
    [
        (['{"text": "a"}', "", '{"text": "b"', '{"text": "c"}'], "auto", "train.jsonl: line 3: not valid JSON"),
        (['{"text": "a"}', "[1, 2]"], "auto", "train.jsonl: line 2: expected a JSON object"),
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "c"}'], "auto", "train.jsonl:2: field `completion`"),
        (['{"prompt": "a", "completion": "b"}', "", '{"prompt": "c", "completion": ""}'], "auto", "train.jsonl:3:"),
        (['{"question": "a"}'], "auto", "train.jsonl:1: cannot detect the format"),
        (['{"messages": [{"role": "robot", "content": "x"}]}'], "chat", "messages[0].role must be one of"),
        (['{"messages": [{"role": "user", "content": "x"}]}'], "chat", "no assistant turn"),
        (['{"text": "a"}'], "prompt-completion", "train.jsonl:1: field `prompt` must be a string (missing)"),
    ],
)
def test_a_bad_record_names_file_and_line(
    tmp_path: Path, tokenizer: Any, lines: list[str], fmt: str, message: str
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    validation = tiny.write_jsonl(tmp_path / "validation.jsonl", tiny.examples("text", 2))
    spec = DatasetSpec(train=str(train), validation=str(validation), format=fmt)
    with pytest.raises(DataError) as raised:
        prepare(spec, tmp_path, seed=1, tokenizer=tokenizer)
    assert message in raised.value.message.replace(str(tmp_path) + "/", "")


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_records(tmp_path / "nope.jsonl", "nope.jsonl")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_records(tmp_path / "data.txt", "data.txt")


def test_csv_and_parquet_are_read_with_line_numbers(tmp_path: Path) -> None:
    import datasets

    rows = tiny.examples("prompt-completion", 3)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "train.csv"), index=False)
    parquet = read_records(tmp_path / "train.parquet", "train.parquet")
    csv = read_records(tmp_path / "train.csv", "train.csv")
    assert [r.fields for r in parquet] == [r.fields for r in csv] == rows
    assert [r.line for r in csv] == [2, 3, 4] and [r.line for r in parquet] == [1, 2, 3]


def test_report_catches_planted_duplicates_and_leakage(tmp_path: Path, tokenizer: Any) -> None:
    train, validation = tiny.write_dataset(tmp_path, "chat", train=40, validation=10, duplicates=3, leaked=2)
    spec = DatasetSpec(train=str(train), validation=str(validation), max_seq_length=64, max_leakage_fraction=0.1)
    data = prepare(spec, tmp_path, seed=1, tokenizer=tokenizer)
    report = data.report
    assert (report.format, report.train.records, report.validation.records) == ("chat", 45, 10)
    assert report.duplicates == 3 and report.duplicate_examples == [f"{train}:{n}" for n in (41, 42, 43)]
    assert report.leaked == 2 and report.leakage_fraction == pytest.approx(0.2)
    assert report.leaked_examples == [f"{validation}:1", f"{validation}:2"]
    with pytest.raises(DataError, match=r"2 of 10 validation examples \(20.0%\)"):
        reports.check_leakage(report)
    reports.write(report, tmp_path / "work")
    assert json.loads((tmp_path / "work" / "data_report.json").read_text())["leaked"] == 2
    assert "Exact duplicates in train: **3**" in (tmp_path / "work" / "data_report.md").read_text()


def test_clean_data_passes_the_leakage_check(tmp_path: Path, tokenizer: Any) -> None:
    train, validation = tiny.write_dataset(tmp_path, "text", train=20, validation=5)
    data = prepare(DatasetSpec(train=str(train), validation=str(validation)), tmp_path, 1, tokenizer)
    assert (data.report.duplicates, data.report.leaked) == (0, 0)
    reports.check_leakage(data.report)
    assert data.report.train.length_percentiles["max"] >= data.report.train.length_percentiles["p50"] > 0


def test_held_out_split_is_seeded_disjoint_and_in_file_order() -> None:
    records = [Record({"text": str(i)}, "t.jsonl", i + 1) for i in range(50)]
    train, validation = held_out_split(records, 0.1, seed=3)
    assert len(validation) == 5 and len(train) == 45
    assert {r.line for r in train}.isdisjoint(r.line for r in validation)
    assert [r.line for r in validation] == sorted(r.line for r in validation)
    assert held_out_split(records, 0.1, seed=3) == (train, validation)
    assert held_out_split(records, 0.1, seed=4)[1] != validation


def test_percentile_is_nearest_rank() -> None:
    assert reports.percentile([], 50) == 0
    assert reports.percentile([5, 1, 3], 50) == 3
    assert reports.percentile(list(range(1, 101)), 95) == 95
    assert reports.percentile([7], 99) == 7
