"""From the manifest's `dataset` block to training sequences, validation and test examples and the data report.

This is the one place that strings together the steps of `data`, `packing` and `report`: read the
files, detect and check the format of every record, hold out a test split (`testSplit`) and a validation
split when there are no such files, tokenize, pack, and build the report (failing on leakage). The test
set decides nothing: validation drives early stopping and the best checkpoint; the test set only scores
the verdict, so that the model chosen on one set is not praised on the same set. Every rank runs it and gets
the same result; only rank 0 writes the report.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.training import DatasetSpec
from kubetune.trainer import report as reports
from kubetune.trainer.config import resolve_path
from kubetune.trainer.data import (
    Dropped,
    Example,
    GenerationCase,
    Record,
    check_record,
    detect_format,
    generation_case,
    read_records,
    tokenize_or_explain,
    with_conversation_as_messages,
)
from kubetune.trainer.errors import DataError
from kubetune.trainer.packing import Sequence, build_sequences
from kubetune.trainer.preference import Pair, tokenize_pair


@dataclass(frozen=True)
class HeldOut:
    """A scored split (validation or test): its examples, exact-match cases and records."""

    examples: list[Example] | list[Pair]
    """Tokenized examples (pairs for DPO), in a fixed order."""
    cases: list[GenerationCase]
    """Exact-match cases of the examples (same order; empty for `text`)."""
    records: list[Record]
    """The raw records behind `examples`, in the same order."""


@dataclass(frozen=True)
class PreparedData:
    """Everything training and evaluation need from the data."""

    format: str
    sequences: list[Sequence] | list[Pair]
    """Training sequences (packed or single examples; preference pairs for DPO), in file order."""
    validation: list[Example] | list[Pair]
    """Tokenized validation examples (pairs for DPO), in a fixed order."""
    generation_cases: list[GenerationCase]
    """Exact-match cases of the validation examples (same order; empty for `text`)."""
    report: reports.DataReport
    train_records: list[Record]
    """The raw training records (few-shot baselines pick solved examples from them)."""
    validation_records: list[Record]
    """The raw validation records behind `validation`, in the same order."""
    test: HeldOut | None = None
    """The test set (dataset.test or testSplit): scored only for the verdict, never for a decision."""

    @property
    def verdict_set_name(self) -> str:
        """What the verdict is scored on: `test` when there is a test set, else `validation`."""
        return "test" if self.test is not None else "validation"

    @property
    def verdict_set(self) -> HeldOut:
        """The set called `verdict_set_name`."""
        return self.held(self.verdict_set_name)

    def held(self, name: str) -> HeldOut:
        """The held-out set called `name` (`validation`, or `test` when there is one)."""
        if name == "test" and self.test is not None:
            return self.test
        if name != "validation":
            raise ValueError(f"no held-out set called {name!r}")
        return HeldOut(self.validation, self.generation_cases, self.validation_records)


@dataclass(frozen=True)
class Splits:
    """The records of each split, every one checked against `format`."""

    train: list[Record]
    validation: list[Record]
    test: list[Record]
    """Empty when the job has no test set."""
    format: str


def held_out_split(
    records: list[Record], fraction: float, seed: int, purpose: str = "validation"
) -> tuple[list[Record], list[Record]]:
    """(kept, held out): a seeded `fraction` (at least one record) of `records` held out, both in file
    order. `purpose` seeds the choice (the test split and the validation split draw independently)."""
    # Written out rather than `datasets.Dataset.train_test_split` because the records must keep their
    # file and line for messages and the report; the rule is three lines.
    count = max(1, math.ceil(len(records) * fraction))
    if count >= len(records):
        raise DataError(f"{records[0].source}: {len(records)} record(s) are too few to hold out a {purpose} split")
    label = "kubetune-split" if purpose == "validation" else f"kubetune-{purpose}-split"
    chosen = set(random.Random(f"{label}-{seed}").sample(range(len(records)), count))
    kept = [r for i, r in enumerate(records) if i not in chosen]
    held = [r for i, r in enumerate(records) if i in chosen]
    return kept, held


def _tokenize_all(
    records: list[Record], fmt: str, tokenizer: Any, spec: DatasetSpec, train_on_inputs: bool
) -> list[Any]:
    """Each record's Example (a Pair for preference data), or why it has nothing to learn."""
    if fmt == "preference":
        return [tokenize_pair(r, tokenizer, spec.max_seq_length) for r in records]
    return [tokenize_or_explain(r, fmt, tokenizer, spec.max_seq_length, train_on_inputs) for r in records]


def read_split(spec: DatasetSpec, base: Path, seed: int) -> Splits:
    """The records of every split, each checked against the format. The test split is held out of the
    training file first, then the validation split of what remains: both are pure functions of the file
    and the seed, so every rank and every attempt draws the same ones."""
    train = read_records(resolve_path(spec.train, base), spec.train)
    test: list[Record] = []
    if spec.test:
        test = read_records(resolve_path(spec.test, base), spec.test)
    elif spec.test_split:
        train, test = held_out_split(train, spec.test_split, seed, purpose="test")
    if spec.validation:
        validation = read_records(resolve_path(spec.validation, base), spec.validation)
    else:
        train, validation = held_out_split(train, spec.validation_split, seed)
    fmt = spec.format if spec.format != "auto" else detect_format(train[0])
    if fmt == "preference":  # TRL's conversational rows: the conversation in `prompt`, read as `messages`
        train, validation, test = ([with_conversation_as_messages(r) for r in rs] for rs in (train, validation, test))
    for record in train + validation + test:
        check_record(record, fmt)
    return Splits(train, validation, test, fmt)


def _held_out(records: list[Record], examples: list[Example | Dropped], fmt: str, tokenizer: Any) -> HeldOut:
    kept = [(r, e) for r, e in zip(records, examples, strict=True) if not isinstance(e, Dropped)]
    cases = [generation_case(r, fmt, tokenizer) for r, _ in kept]
    return HeldOut([e for _, e in kept], [c for c in cases if c is not None], [r for r, _ in kept])


def prepare(spec: DatasetSpec, base: Path, seed: int, tokenizer: Any) -> PreparedData:
    """Read, check, split, tokenize and pack the data and build the report; DataError on any problem in
    the files. Leakage is only reported here: the caller writes the report first, then applies
    `report.check_leakage`. `base` resolves relative paths (the manifest's folder)."""
    splits = read_split(spec, base, seed)
    fmt = splits.format
    chats = fmt == "chat" or (fmt == "preference" and "messages" in splits.train[0].fields)
    if chats and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{spec.train}: chat records need a tokenizer with a chat template; this one has none")
    train_examples = _tokenize_all(splits.train, fmt, tokenizer, spec, spec.train_on_inputs)
    # Validation and test always score the answer tokens only (what the user cares about), whatever trainOnInputs.
    validation_examples = _tokenize_all(splits.validation, fmt, tokenizer, spec, False)
    test_examples = _tokenize_all(splits.test, fmt, tokenizer, spec, False)
    kept_train = [e for e in train_examples if not isinstance(e, Dropped)]
    if not kept_train:
        first = next(e for e in train_examples if isinstance(e, Dropped))
        raise DataError(
            f"{spec.train}: no training example has a token left to learn (the first, {splits.train[0].where}: "
            f"{first.cause(spec.max_seq_length)}); raise dataset.maxSeqLength or shorten the prompts"
        )
    # Preference pairs are trained as they are: the API refuses packing for them.
    sequences = kept_train if fmt == "preference" else build_sequences(kept_train, spec.packing, spec.max_seq_length)
    validation = _held_out(splits.validation, validation_examples, fmt, tokenizer)
    examples = (train_examples, validation_examples, test_examples)
    report = _with_sequences(build_report(spec, splits, *examples), len(sequences))
    return PreparedData(
        format=fmt,
        sequences=sequences,
        validation=validation.examples,
        generation_cases=validation.cases,
        report=report,
        train_records=splits.train,
        validation_records=validation.records,
        test=_held_out(splits.test, test_examples, fmt, tokenizer) if splits.test else None,
    )


def build_report(
    spec: DatasetSpec,
    splits: Splits,
    train_examples: list[Example | Dropped],
    validation_examples: list[Example | Dropped],
    test_examples: list[Example | Dropped] | None = None,
) -> reports.DataReport:
    """The data report of tokenized splits (pure: no files touched)."""
    duplicates = reports.find_duplicates(splits.train)
    leaked = reports.find_leakage(splits.train, splits.validation)
    test = None
    if splits.test:
        test_leaked = reports.find_leakage(splits.train + splits.validation, splits.test)
        test = reports.TestSplitReport(
            file=spec.test,
            split=None if spec.test else spec.test_split,
            stats=reports.split_stats(splits.test, test_examples or [], spec.max_seq_length),
            leaked=len(test_leaked),
            leakage_fraction=len(test_leaked) / len(splits.test),
            leaked_examples=[r.where for r in test_leaked[:10]],
        )
    return reports.DataReport(
        format=splits.format,
        train_file=spec.train,
        validation_file=spec.validation,
        validation_split=None if spec.validation else spec.validation_split,
        max_seq_length=spec.max_seq_length,
        packing=spec.packing,
        sequences=sum(not isinstance(e, Dropped) for e in train_examples),
        train=reports.split_stats(splits.train, train_examples, spec.max_seq_length),
        validation=reports.split_stats(splits.validation, validation_examples, spec.max_seq_length),
        duplicates=len(duplicates),
        duplicate_examples=[r.where for r in duplicates[:10]],
        leaked=len(leaked),
        leakage_fraction=len(leaked) / len(splits.validation) if splits.validation else 0.0,
        leaked_examples=[r.where for r in leaked[:10]],
        max_leakage_fraction=spec.max_leakage_fraction,
        test=test,
    )


def _with_sequences(report: reports.DataReport, sequences: int) -> reports.DataReport:
    from dataclasses import replace

    return replace(report, sequences=sequences)
