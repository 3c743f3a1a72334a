"""Reading, checking and tokenizing datasets, and the data report — no training, no launch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.training import DatasetSpec
from kubetune.trainer import report as reports
from kubetune.trainer.data import IGNORE_INDEX, Dropped, Record, generation_case, read_records, tokenize_record
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


def test_the_report_names_the_line_and_cause_of_every_dropped_or_truncated_example(
    tmp_path: Path, tokenizer: Any
) -> None:
    long_words = " apple river stone cloud" * 5
    records = tiny.examples("prompt-completion", 20)
    records[2] = {"prompt": "Map: apple\nAnswer:", "completion": long_words}  # file line 3: cut
    records[15] = {"prompt": f"Map:{long_words}\nAnswer:", "completion": " window"}  # file line 17: no answer left
    lines = [json.dumps(r) for r in records]
    lines.insert(9, "")  # a blank line: records after it sit one line further down
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    validation = tiny.write_jsonl(tmp_path / "validation.jsonl", tiny.examples("prompt-completion", 4, start=20))
    spec = DatasetSpec(train=str(train), validation=str(validation), max_seq_length=16)
    report = prepare(spec, tmp_path, seed=1, tokenizer=tokenizer).report

    cut = len(tokenizer(records[2]["prompt"]).input_ids + tokenizer(long_words, add_special_tokens=False).input_ids) + 1
    prompt = len(tokenizer(records[15]["prompt"]).input_ids)
    answer = len(tokenizer(" window", add_special_tokens=False).input_ids) + 1
    assert report.train.truncated_examples == [f"{train}:3: truncated to 16 tokens (from {cut})"]
    assert report.train.dropped_examples == [
        f"{train}:17: dropped: the answer starts after maxSeqLength (16 tokens), at token {prompt + 1} of "
        f"{prompt + answer}"
    ]
    assert (report.train.truncated, report.train.dropped) == (1, 1)
    assert report.validation.dropped_examples == report.validation.truncated_examples == []
    reports.write(report, tmp_path / "work")
    markdown = (tmp_path / "work" / "data_report.md").read_text()
    assert "## Dropped (nothing left to learn): 1" in markdown and f"- {train}:17: dropped: the answer" in markdown
    assert f"- {train}:3: truncated to 16 tokens" in markdown
    saved = json.loads((tmp_path / "work" / "data_report.json").read_text())
    assert saved["train"]["dropped_examples"] == report.train.dropped_examples


@pytest.mark.parametrize(
    ("dropped", "cause"),
    [
        (Dropped(full_length=40, answer_start=30), "dropped: the answer starts after maxSeqLength (16 tokens), at token 31 of 40"),
        (Dropped(full_length=5, answer_start=None), "dropped: no token to learn (the answer is empty once tokenized)"),
    ],
)  # fmt: skip
def test_a_dropped_example_says_why(dropped: Dropped, cause: str) -> None:
    assert dropped.cause(16) == cause


def test_the_markdown_lists_the_first_examples_and_counts_the_rest(tmp_path: Path, tokenizer: Any) -> None:
    records = [{"text": "apple river stone cloud green tiger piano " * 3} for _ in range(30)]
    records += tiny.examples("text", 4)
    train = tiny.write_jsonl(tmp_path / "train.jsonl", [{**r, "n": i} for i, r in enumerate(records)])
    validation = tiny.write_jsonl(tmp_path / "validation.jsonl", tiny.examples("text", 2, start=10))
    report = prepare(
        DatasetSpec(train=str(train), validation=str(validation), max_seq_length=16), tmp_path, 1, tokenizer
    ).report
    assert len(report.train.truncated_examples) == 30
    markdown = reports.to_markdown(report)
    assert markdown.count("truncated to 16 tokens") == reports.MARKDOWN_LIST_LIMIT
    assert f"... and {30 - reports.MARKDOWN_LIST_LIMIT} more (all of them in data_report.json)" in markdown


def test_a_test_split_is_disjoint_stable_and_held_out_before_validation(tmp_path: Path, tokenizer: Any) -> None:
    train, _ = tiny.write_dataset(tmp_path, "prompt-completion", train=60, validation=None)
    spec = DatasetSpec(train=str(train), validation_split=0.1, test_split=0.2)
    data = prepare(spec, tmp_path, 5, tokenizer)
    assert data.test is not None and data.report.test is not None
    lines = {
        "train": {r.line for r in data.train_records},
        "validation": {r.line for r in data.validation_records},
        "test": {r.line for r in data.test.records},
    }
    assert (len(lines["test"]), len(lines["validation"]), len(lines["train"])) == (12, 5, 43)
    assert lines["train"] | lines["validation"] | lines["test"] == set(range(1, 61))
    assert lines["test"].isdisjoint(lines["train"] | lines["validation"])
    assert lines["validation"].isdisjoint(lines["train"])
    # A restart (another process, another attempt) draws the same split from the same file and seed.
    again = prepare(spec, tmp_path, 5, tokenizer)
    assert again.test is not None and [r.line for r in again.test.records] == [r.line for r in data.test.records]
    assert data.verdict_set.records == data.test.records and len(data.test.cases) == 12
    assert (data.report.test.stats.records, data.report.test.split, data.report.test.leaked) == (12, 0.2, 0)
    assert "| records | 43 | 5 | 12 |" in reports.to_markdown(data.report)
    assert "12 test examples" in reports.summary_line(data.report)


def test_without_a_test_set_the_verdict_is_scored_on_validation(tmp_path: Path, tokenizer: Any) -> None:
    train, validation = tiny.write_dataset(tmp_path, "prompt-completion", train=20, validation=5)
    data = prepare(DatasetSpec(train=str(train), validation=str(validation)), tmp_path, 1, tokenizer)
    assert data.test is None and data.report.test is None
    assert data.verdict_set.records == data.validation_records


def test_a_test_file_that_repeats_training_or_validation_examples_is_a_data_error(
    tmp_path: Path, tokenizer: Any
) -> None:
    train, validation = tiny.write_dataset(tmp_path, "prompt-completion", train=20, validation=5)
    copied = [json.loads(line) for line in validation.read_text().splitlines()[:2]]  # type: ignore[union-attr]
    test = tiny.write_jsonl(tmp_path / "test.jsonl", copied + tiny.examples("prompt-completion", 8, start=40))
    spec = DatasetSpec(train=str(train), validation=str(validation), test=str(test))
    data = prepare(spec, tmp_path, 1, tokenizer)
    assert data.report.test is not None and data.report.test.leaked == 2
    with pytest.raises(DataError, match=r"2 of 10 test examples \(20.0%\) also appear in the training or validation"):
        reports.check_leakage(data.report)
