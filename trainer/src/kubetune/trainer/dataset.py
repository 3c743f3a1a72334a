"""From the manifest's `dataset` block to training sequences, validation examples and the data report.

This is the one place that strings together the steps of `data`, `packing` and `report`: read both
files, detect and check the format of every record, hold out a validation split when there is no
validation file, tokenize, pack, and build the report (failing on leakage). Every rank runs it and gets
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
)
from kubetune.trainer.errors import DataError
from kubetune.trainer.packing import Sequence, build_sequences


@dataclass(frozen=True)
class PreparedData:
    """Everything training and evaluation need from the data."""

    format: str
    sequences: list[Sequence]
    """Training sequences (packed or single examples), in file order."""
    validation: list[Example]
    """Tokenized validation examples, in a fixed order."""
    generation_cases: list[GenerationCase]
    """Exact-match cases of the validation examples (same order; empty for `text`)."""
    report: reports.DataReport
    train_records: list[Record]
    """The raw training records (few-shot baselines pick solved examples from them)."""
    validation_records: list[Record]
    """The raw validation records behind `validation`, in the same order."""


def held_out_split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, validation): a seeded `fraction` (at least one record) of `records` held out, both in
    file order."""
    # Written out rather than `datasets.Dataset.train_test_split` because the records must keep their
    # file and line for messages and the report; the rule is three lines.
    count = max(1, math.ceil(len(records) * fraction))
    if count >= len(records):
        raise DataError(f"{records[0].source}: {len(records)} record(s) are too few to hold out a validation split")
    chosen = set(random.Random(f"kubetune-split-{seed}").sample(range(len(records)), count))
    train = [r for i, r in enumerate(records) if i not in chosen]
    validation = [r for i, r in enumerate(records) if i in chosen]
    return train, validation


def _tokenize_all(
    records: list[Record], fmt: str, tokenizer: Any, spec: DatasetSpec, train_on_inputs: bool
) -> list[Example | Dropped]:
    return [tokenize_or_explain(r, fmt, tokenizer, spec.max_seq_length, train_on_inputs) for r in records]


def read_split(spec: DatasetSpec, base: Path, seed: int) -> tuple[list[Record], list[Record], str]:
    """(train records, validation records, format), every record checked against the format."""
    train = read_records(resolve_path(spec.train, base), spec.train)
    if spec.validation:
        validation = read_records(resolve_path(spec.validation, base), spec.validation)
    else:
        train, validation = held_out_split(train, spec.validation_split, seed)
    fmt = spec.format if spec.format != "auto" else detect_format(train[0])
    for record in train + validation:
        check_record(record, fmt)
    return train, validation, fmt


def prepare(spec: DatasetSpec, base: Path, seed: int, tokenizer: Any) -> PreparedData:
    """Read, check, split, tokenize and pack the data and build the report; DataError on any problem in
    the files. Leakage is only reported here: the caller writes the report first, then applies
    `report.check_leakage`. `base` resolves relative paths (the manifest's folder)."""
    train_records, validation_records, fmt = read_split(spec, base, seed)
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{spec.train}: chat records need a tokenizer with a chat template; this one has none")
    train_examples = _tokenize_all(train_records, fmt, tokenizer, spec, spec.train_on_inputs)
    # Validation always scores the answer tokens only (what the user cares about), whatever trainOnInputs.
    validation_examples = _tokenize_all(validation_records, fmt, tokenizer, spec, False)
    kept_train = [e for e in train_examples if isinstance(e, Example)]
    if not kept_train:
        first = next(e for e in train_examples if isinstance(e, Dropped))
        raise DataError(
            f"{spec.train}: no training example has a token left to learn (the first, {train_records[0].where}: "
            f"{first.cause(spec.max_seq_length)}); raise dataset.maxSeqLength or shorten the prompts"
        )
    sequences = build_sequences(kept_train, spec.packing, spec.max_seq_length)
    kept_validation = [
        (r, e) for r, e in zip(validation_records, validation_examples, strict=True) if isinstance(e, Example)
    ]
    cases = [generation_case(r, fmt, tokenizer) for r, _ in kept_validation]
    report = build_report(spec, fmt, train_records, validation_records, train_examples, validation_examples)
    report = _with_sequences(report, len(sequences))
    return PreparedData(
        format=fmt,
        sequences=sequences,
        validation=[e for _, e in kept_validation],
        generation_cases=[c for c in cases if c is not None],
        report=report,
        train_records=train_records,
        validation_records=[r for r, _ in kept_validation],
    )


def build_report(
    spec: DatasetSpec,
    fmt: str,
    train_records: list[Record],
    validation_records: list[Record],
    train_examples: list[Example | Dropped],
    validation_examples: list[Example | Dropped],
) -> reports.DataReport:
    """The data report of tokenized splits (pure: no files touched)."""
    duplicates = reports.find_duplicates(train_records)
    leaked = reports.find_leakage(train_records, validation_records)
    return reports.DataReport(
        format=fmt,
        train_file=spec.train,
        validation_file=spec.validation,
        validation_split=None if spec.validation else spec.validation_split,
        max_seq_length=spec.max_seq_length,
        packing=spec.packing,
        sequences=sum(isinstance(e, Example) for e in train_examples),
        train=reports.split_stats(train_records, train_examples, spec.max_seq_length),
        validation=reports.split_stats(validation_records, validation_examples, spec.max_seq_length),
        duplicates=len(duplicates),
        duplicate_examples=[r.where for r in duplicates[:10]],
        leaked=len(leaked),
        leakage_fraction=len(leaked) / len(validation_records) if validation_records else 0.0,
        leaked_examples=[r.where for r in leaked[:10]],
        max_leakage_fraction=spec.max_leakage_fraction,
    )


def _with_sequences(report: reports.DataReport, sequences: int) -> reports.DataReport:
    from dataclasses import replace

    return replace(report, sequences=sequences)
