"""Dataset files to token ids and loss masks: reading, checking, format detection and tokenization.

Files are read with `datasets` (JSONL/JSON, Parquet, CSV). Every record is checked before any training
starts, and the first bad one fails the run as a data error naming file, line and problem: a typo on
line 40,000 must not surface an hour into training.

Three supervised formats, each with a loss mask (label -100 = not learned), and preference pairs:

- `text` ({text}): every token is learned; the tokenizer's EOS is appended.
- `prompt-completion` ({prompt, completion}): prompt and completion are tokenized separately and
  concatenated, so the boundary is exact; only the completion (plus EOS) is learned unless
  `trainOnInputs`.
- `chat` ({messages: [{role, content}]}): rendered with the tokenizer's chat template. An assistant
  turn's span is what the template adds for that turn after the generation prompt, i.e. the characters
  between render(messages[:i], add_generation_prompt=True) and render(messages[:i+1]) — for ChatML the
  content, `<|im_end|>` and the newline. A token is learned when its first character lies in such a
  span. This needs a template whose renders of shorter conversations are prefixes of longer ones (true
  of ChatML, Llama 3, Mistral, Gemma); any other template fails with a clear message unless
  `trainOnInputs`.
- `preference` ({prompt or messages, chosen, rejected}, for `method.type: dpo`; TRL's conversational rows,
  `prompt` as a list of messages, are read as `messages`): each pair is tokenized
  as two examples of the supervised format its prompt implies, the prompt answered once with `chosen`
  and once with `rejected` (kubetune.trainer.preference); only the answers' tokens are scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import DataError

IGNORE_INDEX = -100
CHAT_ROLES = ("system", "user", "assistant", "tool")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Record:
    """One raw example with where it came from (for messages and the data report)."""

    fields: dict[str, Any]
    source: str
    """The file as the user named it."""
    line: int
    """1-based line in a JSONL/CSV file; 1-based record number in JSON arrays and Parquet."""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def key(self) -> str:
        """Canonical JSON of the fields: equal keys are exact duplicates."""
        return json.dumps(self.fields, sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Example:
    """One tokenized example ready for batching."""

    input_ids: list[int]
    labels: list[int]
    """Same length as input_ids; IGNORE_INDEX where no loss is taken."""
    truncated: bool
    """Whether the example was longer than maxSeqLength and cut."""
    full_length: int
    """Tokens before truncation."""


def _line_numbers(path: Path, count: int) -> list[int]:
    """1-based file lines of a JSONL/CSV file's records (blank lines and a CSV header skipped)."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8", errors="replace") as handle:
            lines = [number for number, text in enumerate(handle, start=1) if text.strip()]
        return lines[:count] if len(lines) >= count else list(range(1, count + 1))
    if path.suffix == ".csv":
        return list(range(2, count + 2))
    return list(range(1, count + 1))


def _find_bad_json_line(path: Path) -> str | None:
    """The first line of a JSONL file that is not a JSON object, as `line N: problem`."""
    with path.open(encoding="utf-8", errors="strict") as handle:
        try:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as error:
                    return f"line {number}: not valid JSON ({error.msg} at column {error.colno})"
                if not isinstance(value, dict):
                    return f"line {number}: expected a JSON object, got {type(value).__name__}"
        except UnicodeDecodeError as error:
            return f"not UTF-8 text ({error.reason} at byte {error.start})"
    return None


def read_records(path: Path, display: str) -> list[Record]:
    """All records of a dataset file via `datasets`; DataError naming the file (and line) if unreadable."""
    import datasets

    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{display}: unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet or .csv")
    if not path.is_file():
        raise DataError(f"{display}: file not found (resolved to {path})")
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as error:
        bad = _find_bad_json_line(path) if path.suffix.lower() == ".jsonl" else None
        said = str(error).strip().splitlines()[0] if str(error).strip() else None
        detail = bad or (
            f"cannot be read: {said}"
            if said
            else f"cannot be read as {builder} ({type(error).__name__}); check that it is a valid {path.suffix} file"
        )
        raise DataError(f"{display}: {detail}") from error
    rows = table.to_list()
    if not rows:
        raise DataError(f"{display}: no records")
    lines = _line_numbers(path, len(rows))
    return [
        Record({k: v for k, v in row.items() if v is not None}, display, line)
        for row, line in zip(rows, lines, strict=True)
    ]


def detect_format(record: Record) -> str:
    """The format a record's fields imply; DataError when they fit none."""
    fields = set(record.fields)
    if {"chosen", "rejected"} <= fields:
        return "preference"
    if "messages" in fields:
        return "chat"
    if {"prompt", "completion"} <= fields:
        return "prompt-completion"
    if "text" in fields:
        return "text"
    found = ", ".join(sorted(fields)) or "none"
    raise DataError(
        f"{record.where}: cannot detect the format: expected `text`, `prompt` and `completion`, `messages`, or "
        "`chosen` and `rejected` "
        f"(found fields: {found}); or set dataset.format"
    )


def _require_string(record: Record, field: str, value: Any, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        shown = "missing" if value is None else f"got {type(value).__name__}"
        raise DataError(f"{record.where}: field `{field}` must be a string ({shown})")
    if not allow_empty and not value.strip():
        raise DataError(f"{record.where}: field `{field}` is empty")


def check_record(record: Record, fmt: str) -> None:
    """Raise DataError naming file, line and field when `record` does not fit `fmt`."""
    fields = record.fields
    if fmt == "text":
        _require_string(record, "text", fields.get("text"))
    elif fmt == "prompt-completion":
        _require_string(record, "prompt", fields.get("prompt"), allow_empty=True)
        _require_string(record, "completion", fields.get("completion"))
    elif fmt == "preference":
        _check_preference(record)
    elif fmt == "chat":
        messages = fields.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{record.where}: field `messages` must be a non-empty list of {{role, content}}")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
                role = message.get("role") if isinstance(message, dict) else message
                raise DataError(
                    f"{record.where}: messages[{index}].role must be one of {', '.join(CHAT_ROLES)} (got {role!r})"
                )
            _require_string(record, f"messages[{index}].content", message.get("content"), allow_empty=True)
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{record.where}: `messages` has no assistant turn to learn from")


def _check_preference(record: Record) -> None:
    """A pair: `prompt` (a string) or `messages` (the conversation before the answer; `prompt` as a list of
    messages is read as `messages`), and the `chosen` and `rejected` answers (strings, or one assistant
    message each)."""
    record = with_conversation_as_messages(record)
    fields = record.fields
    if "messages" in fields:
        check_record(
            Record(
                {"messages": [*fields["messages"], {"role": "assistant", "content": ""}]}, record.source, record.line
            ),
            "chat",
        )
    else:
        _require_string(record, "prompt", fields.get("prompt"), allow_empty=True)
    for side in ("chosen", "rejected"):
        _require_string(record, side, answer_text(fields.get(side)))


def with_conversation_as_messages(record: Record) -> Record:
    """A preference record whose `prompt` is a list of messages (TRL's conversational preference rows) as
    the same record with that conversation under `messages`, the field every later step reads; any other
    record as it is."""
    fields = record.fields
    if "messages" in fields or not isinstance(fields.get("prompt"), list):
        return record
    rest = {key: value for key, value in fields.items() if key != "prompt"}
    return Record({**rest, "messages": fields["prompt"]}, record.source, record.line)


def answer_text(value: Any) -> Any:
    """A preference answer as text: the string, or the content of a one-message assistant list."""
    if (
        isinstance(value, list)
        and len(value) == 1
        and isinstance(value[0], dict)
        and value[0].get("role") == "assistant"
    ):
        return value[0].get("content")
    return value


def as_supervised(record: Record, side: str = "chosen") -> tuple[Record, str]:
    """A preference record as the supervised record that answers its prompt with `side`, and that record's
    format: `prompt-completion` for a `prompt`, `chat` for `messages`."""
    fields, answer = record.fields, answer_text(record.fields[side])
    if "messages" in fields:
        messages = [*fields["messages"], {"role": "assistant", "content": answer}]
        return Record({"messages": messages}, record.source, record.line), "chat"
    return Record({"prompt": fields["prompt"], "completion": answer}, record.source, record.line), "prompt-completion"


def _messages(record: Record) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in record.fields["messages"]]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return text


def _render_prefix(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation so far plus the generation prompt (some templates refuse an empty one)."""
    try:
        return _render(tokenizer, messages, generation_prompt=True)
    except Exception:
        if messages:
            raise
        return ""


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]], where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of its assistant turns."""
    full = _render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render_prefix(tokenizer, messages[:index])
        through = _render(tokenizer, messages[: index + 1])
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                f"{where}: the tokenizer's chat template does not render conversations prefix by prefix, so "
                "assistant tokens cannot be located; set dataset.trainOnInputs: true or use another template"
            )
        spans.append((len(before), len(through)))
    return full, spans


def _with_eos(ids: list[int], eos_id: int | None) -> list[int]:
    return [*ids, eos_id] if eos_id is not None and (not ids or ids[-1] != eos_id) else ids


def tokenize_record(
    record: Record, fmt: str, tokenizer: Any, max_seq_length: int, train_on_inputs: bool
) -> Example | None:
    """Token ids and labels of one record, truncated to `max_seq_length`. None when truncation leaves
    no learned token (the caller counts such examples as dropped; `tokenize_or_explain` says why)."""
    example = tokenize_or_explain(record, fmt, tokenizer, max_seq_length, train_on_inputs)
    return example if isinstance(example, Example) else None


@dataclass(frozen=True)
class Dropped:
    """A record that leaves no token to learn, and why (for the data report's line by line list)."""

    full_length: int
    """Tokens before truncation."""
    answer_start: int | None
    """Position of the first learned token before truncation; None when no token is learned at all."""

    def cause(self, max_seq_length: int) -> str:
        if self.answer_start is None:
            return "dropped: no token to learn (the answer is empty once tokenized)"
        return (
            f"dropped: the answer starts after maxSeqLength ({max_seq_length} tokens), at token "
            f"{self.answer_start + 1} of {self.full_length}"
        )


def tokenize_or_explain(
    record: Record, fmt: str, tokenizer: Any, max_seq_length: int, train_on_inputs: bool
) -> Example | Dropped:
    """The record's Example, truncated to `max_seq_length`, or why it has no token left to learn."""
    ids, labels = _encode(record, fmt, tokenizer, train_on_inputs)
    example = Example(ids[:max_seq_length], labels[:max_seq_length], len(ids) > max_seq_length, len(ids))
    # The first position is never predicted (labels shift by one), so a label there teaches nothing.
    if any(label != IGNORE_INDEX for label in example.labels[1:]):
        return example
    learned = [position for position, label in enumerate(labels) if position and label != IGNORE_INDEX]
    return Dropped(len(ids), learned[0] if learned else None)


def _encode(record: Record, fmt: str, tokenizer: Any, train_on_inputs: bool) -> tuple[list[int], list[int]]:
    """Token ids and labels of a whole record, before truncation."""
    eos = tokenizer.eos_token_id
    fields = record.fields
    if fmt == "text":
        ids = _with_eos(tokenizer(fields["text"]).input_ids, eos)
        return ids, list(ids)
    if fmt == "prompt-completion":
        prompt = tokenizer(fields["prompt"]).input_ids
        completion = _with_eos(tokenizer(fields["completion"], add_special_tokens=False).input_ids, eos)
        labels = (list(prompt) if train_on_inputs else [IGNORE_INDEX] * len(prompt)) + completion
        return prompt + completion, labels
    messages = _messages(record)
    if train_on_inputs:
        ids = tokenizer(_render(tokenizer, messages), add_special_tokens=False).input_ids
        return ids, list(ids)
    text, spans = assistant_spans(tokenizer, messages, record.where)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= offset[0] < end for start, end in spans) else IGNORE_INDEX
        for token, offset in zip(encoded.input_ids, encoded.offset_mapping, strict=True)
    ]
    return encoded.input_ids, labels


@dataclass(frozen=True)
class GenerationCase:
    """A prompt to answer greedily and the answer expected (for exact match)."""

    prompt_ids: list[int]
    target: str


def generation_case(record: Record, fmt: str, tokenizer: Any) -> GenerationCase | None:
    """The exact-match case of a record: prompt -> completion, or conversation -> last assistant turn (a
    preference pair: its prompt -> the chosen answer). None for `text` records, which have no answer to
    match."""
    if fmt == "preference":
        record, fmt = as_supervised(record)
    if fmt == "prompt-completion":
        return GenerationCase(tokenizer(record.fields["prompt"]).input_ids, record.fields["completion"].strip())
    if fmt == "chat":
        messages = _messages(record)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = _render(tokenizer, messages[:last], generation_prompt=True)
        return GenerationCase(tokenizer(prompt, add_special_tokens=False).input_ids, messages[last]["content"].strip())
    return None
