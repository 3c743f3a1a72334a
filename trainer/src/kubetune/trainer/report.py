"""The data report: what the model is about to be trained on, written before the first step.

Most failed fine-tunes are data problems that nobody looked at: duplicated examples (the model
memorises them), validation examples that also sit in the training set (the evaluation flatters the
model), examples silently cut by maxSeqLength or dropped because the cut left nothing to learn. The
report counts all of them and names each by file and line with its cause (`train.jsonl:17: dropped:
the answer starts after maxSeqLength (512 tokens)`), so that the fix is an edit, not a search. It is
written as `data_report.json` and `data_report.md` in the workdir and logged, and a leakage fraction
above `dataset.maxLeakageFraction` stops the run as a data error before any compute is spent.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kubetune.trainer.data import Dropped, Example, Record
from kubetune.trainer.errors import DataError

PERCENTILES = (50, 90, 95, 99, 100)
#: Dropped or truncated examples listed by name in data_report.md (the JSON lists every one).
MARKDOWN_LIST_LIMIT = 20


@dataclass(frozen=True)
class SplitStats:
    """Figures of one split (train or validation)."""

    records: int
    """Records read."""
    examples: int
    """Tokenized examples kept."""
    dropped: int
    """Examples dropped because no learned token was left (mostly: truncation cut the whole answer)."""
    truncated: int
    """Examples longer than maxSeqLength (cut to it)."""
    tokens: int
    """Tokens after truncation."""
    learned_tokens: int
    """Tokens that carry loss."""
    length_percentiles: dict[str, int]
    """Token length before truncation at p50, p90, p95, p99 and max."""
    dropped_examples: list[str] = field(default_factory=list)
    """Every dropped example as `file:line: dropped: cause`."""
    truncated_examples: list[str] = field(default_factory=list)
    """Every truncated example as `file:line: truncated to N tokens (from M)`."""


@dataclass(frozen=True)
class TestSplitReport:
    """The test set's figures and its leakage from the training and validation sets."""

    file: str | None
    """dataset.test, when the test set is a file."""
    split: float | None
    """Fraction held out of the training file (dataset.testSplit) when there is no test file."""
    stats: SplitStats
    leaked: int
    """Test records that also appear verbatim in the training or validation set."""
    leakage_fraction: float
    """leaked / test records."""
    leaked_examples: list[str]
    """Up to 10 `file:line` locations of leaked test records."""


@dataclass(frozen=True)
class DataReport:
    """The whole report (written as JSON; field names are the JSON keys)."""

    format: str
    train_file: str
    validation_file: str | None
    validation_split: float | None
    """Fraction held out of the training file when there is no validation file."""
    max_seq_length: int
    packing: bool
    sequences: int
    """Training sequences after packing (= examples without packing)."""
    train: SplitStats
    validation: SplitStats
    duplicates: int
    """Training records that exactly repeat an earlier training record."""
    duplicate_examples: list[str]
    """Up to 10 `file:line` locations of duplicates."""
    leaked: int
    """Validation records that also appear verbatim in the training set."""
    leakage_fraction: float
    """leaked / validation records."""
    leaked_examples: list[str]
    """Up to 10 `file:line` locations of leaked validation records."""
    max_leakage_fraction: float
    test: TestSplitReport | None = None
    """The test set, when the job has one (dataset.test or dataset.testSplit)."""


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank percentile (q in 0-100) of integers; 0 for no values."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def split_stats(records: list[Record], examples: Sequence[Example | Dropped], max_seq_length: int) -> SplitStats:
    """The figures of one split, with every dropped and truncated example named by file, line and cause."""
    kept = [e for e in examples if not isinstance(e, Dropped)]  # Examples, or preference Pairs
    lengths = [e.full_length for e in kept]
    return SplitStats(
        records=len(records),
        examples=len(kept),
        dropped=len(examples) - len(kept),
        truncated=sum(e.truncated for e in kept),
        tokens=sum(len(e.input_ids) for e in kept),
        learned_tokens=sum(sum(1 for label in e.labels[1:] if label != -100) for e in kept),
        length_percentiles={f"p{q}" if q < 100 else "max": percentile(lengths, q) for q in PERCENTILES},
        dropped_examples=[
            f"{r.where}: {e.cause(max_seq_length)}"
            for r, e in zip(records, examples, strict=True)
            if isinstance(e, Dropped)
        ],
        truncated_examples=[
            f"{r.where}: truncated to {max_seq_length} tokens (from {e.full_length})"
            for r, e in zip(records, examples, strict=True)
            if not isinstance(e, Dropped) and e.truncated
        ],
    )


def find_duplicates(records: list[Record]) -> list[Record]:
    """Records that exactly repeat an earlier record of the same list (the repeats, not the firsts)."""
    seen: Counter[str] = Counter()
    repeats = []
    for record in records:
        if seen[record.key]:
            repeats.append(record)
        seen[record.key] += 1
    return repeats


def find_leakage(train: list[Record], validation: list[Record]) -> list[Record]:
    """Validation records that also appear verbatim in the training records."""
    keys = {record.key for record in train}
    return [record for record in validation if record.key in keys]


def check_leakage(report: DataReport) -> None:
    """DataError when more validation (or test) records leak from training than maxLeakageFraction allows."""
    if report.leakage_fraction > report.max_leakage_fraction:
        where = ", ".join(report.leaked_examples[:3])
        raise DataError(
            f"{report.leaked} of {report.validation.records} validation examples ({report.leakage_fraction:.1%}) "
            f"also appear in the training set (e.g. {where}), above dataset.maxLeakageFraction "
            f"{report.max_leakage_fraction:.1%}; remove them from one side"
        )
    test = report.test
    if test is not None and test.leakage_fraction > report.max_leakage_fraction:
        where = ", ".join(test.leaked_examples[:3])
        raise DataError(
            f"{test.leaked} of {test.stats.records} test examples ({test.leakage_fraction:.1%}) also appear in the "
            f"training or validation set (e.g. {where}), above dataset.maxLeakageFraction "
            f"{report.max_leakage_fraction:.1%}; a test example the model trained or was chosen on scores nothing"
        )


def to_markdown(report: DataReport) -> str:
    """A short human-readable version of the report."""
    rows = [
        ("records", "records"),
        ("examples kept", "examples"),
        ("dropped (nothing left to learn)", "dropped"),
        ("truncated to maxSeqLength", "truncated"),
        ("tokens", "tokens"),
        ("learned tokens", "learned_tokens"),
    ]
    test = report.test
    splits = [report.train, report.validation] + ([test.stats] if test else [])
    held = f"validation: `{report.validation_file or f'{report.validation_split:.0%} held out'}`"
    if test:
        held += f"; test: `{test.file or f'{test.split:.0%} held out'}`"
    lines = [
        "# Data report",
        "",
        f"Format `{report.format}`, maxSeqLength {report.max_seq_length}, packing {'on' if report.packing else 'off'}"
        f" ({report.sequences} training sequences).",
        f"Train: `{report.train_file}`; {held}.",
        "",
        "| | train | validation |" + (" test |" if test else ""),
        "|---|---:|---:|" + ("---:|" if test else ""),
    ]
    for label, name in rows:
        lines.append(f"| {label} | " + " | ".join(str(getattr(split, name)) for split in splits) + " |")
    for key in report.train.length_percentiles:
        lines.append(f"| length {key} | " + " | ".join(str(split.length_percentiles[key]) for split in splits) + " |")
    lines += [
        "",
        f"- Exact duplicates in train: **{report.duplicates}** {', '.join(report.duplicate_examples)}",
        f"- Validation examples also in train (leakage): **{report.leaked}** ({report.leakage_fraction:.1%}, "
        f"allowed {report.max_leakage_fraction:.1%}) {', '.join(report.leaked_examples)}",
    ]
    if test:
        lines.append(
            f"- Test examples also in train or validation (leakage): **{test.leaked}** ({test.leakage_fraction:.1%}, "
            f"allowed {report.max_leakage_fraction:.1%}) {', '.join(test.leaked_examples)}"
        )
    lines.append("")
    for title, name in (
        ("Dropped (nothing left to learn)", "dropped_examples"),
        ("Truncated to maxSeqLength", "truncated_examples"),
    ):
        lines += _named_list(title, [line for split in splits for line in getattr(split, name)])
    return "\n".join(lines)


def _named_list(title: str, named: list[str]) -> list[str]:
    """A section listing the first MARKDOWN_LIST_LIMIT examples (data_report.json has them all)."""
    if not named:
        return []
    more = len(named) - MARKDOWN_LIST_LIMIT
    tail = [f"- ... and {more} more (all of them in data_report.json)"] if more > 0 else []
    return [f"## {title}: {len(named)}", "", *(f"- {line}" for line in named[:MARKDOWN_LIST_LIMIT]), *tail, ""]


def write(report: DataReport, workdir: Path) -> None:
    """data_report.json and data_report.md in `workdir` (each written whole, then renamed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("data_report.json", json.dumps(asdict(report), indent=2) + "\n"),
        ("data_report.md", to_markdown(report)),
    ):
        partial = workdir / f".{name}.tmp"
        partial.write_text(text, encoding="utf-8")
        partial.replace(workdir / name)


def summary_line(report: DataReport) -> str:
    """One log line with the figures that matter most."""
    return (
        f"data: {report.train.examples} train / {report.validation.examples} validation"
        f"{f' / {report.test.stats.examples} test' if report.test else ''} examples ({report.format}), "
        f"{report.train.tokens} train tokens, p95 length {report.train.length_percentiles['p95']}, "
        f"{report.train.truncated} truncated, {report.train.dropped} dropped, {report.duplicates} duplicates, "
        f"{report.leaked} leaked ({report.leakage_fraction:.1%})"
    )
