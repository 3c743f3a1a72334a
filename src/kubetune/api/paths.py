"""Folders a job writes may not overlap what it reads, nor each other: the output-path rule.

The export replaces whatever is at `storage.output` (the trainer's atomic `replace_folder`), and pruning
deletes old `step-*` folders under `storage.checkpoints`. So an output equal to, inside or above the
checkpoints, a dataset file or the model would delete them; checkpoints inside or above the dataset or
the model would mix a run's files into the user's inputs (and an export beside them deletes them). Both
are refused when the manifest is validated (pydantic) and by the API server (CEL), the same rule twice.

Folders are compared as text, with one `/` at the end (`pvc://c/run` and `pvc://c/run/` are one folder;
`pvc://c/run2` is not inside `pvc://c/run`). For that to be sound, a `pvc://` path must be written plainly
(`PLAIN_PATH_RULES`): no empty segment (`//`), no `.` and no `..` segment (`..` would also leave the
claim's folder). Normalising such paths inside CEL instead (`split`, `filter`, `join`) was tried: the API
server's cost estimate for it, on strings of up to 4 KiB, is over 100 times the budget of a rule.
Different schemes never overlap (`hf://` is not a folder of the job's; a local path of `kubetune run`
cannot start with `pvc:`, and `storage` is `pvc://` only). `storage.output` unset exports to `output/`
beside the step folders, a name the trainer reserves; written out by hand, inside the checkpoints, it is
refused like any other folder there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune.api.base import Rule

#: A `pvc://` path written plainly: the claim, then segments that are not empty, a `/` at the end allowed.
PLAIN_PVC_PATTERN = "^pvc://[^/]+(/[^/]+)*/?$"
#: A `.` or `..` segment anywhere in a path (RE2 and Python's `re` read both patterns alike).
DOT_SEGMENT_PATTERN = "/[.][.]?(/|$)"


def is_plain(path: str | None) -> bool:
    """Whether a path is unset, not `pvc://` (local paths may climb: they are relative to the manifest), or
    a `pvc://` path written plainly."""
    if path is None or not path.startswith("pvc://"):
        return True
    return re.search(PLAIN_PVC_PATTERN, path) is not None and re.search(DOT_SEGMENT_PATTERN, path) is None


def normalised(path: str) -> str:
    """`path` with one `/` at the end: for plain paths, `a` is inside `b` exactly when normalised(a) starts
    with normalised(b)."""
    return path if path.endswith("/") else path + "/"


def overlaps(first: str, second: str) -> bool:
    """Whether one path is the other, lies inside it, or contains it."""
    a, b = normalised(first), normalised(second)
    return a.startswith(b) or b.startswith(a)


def _cel_normalised(expression: str) -> str:
    return f"({expression}.endsWith('/') ? {expression} : {expression} + '/')"


def cel_overlaps(first: str, second: str) -> str:
    """`overlaps` in CEL, for two string expressions."""
    a, b = _cel_normalised(first), _cel_normalised(second)
    return f"{a}.startsWith({b}) || {b}.startsWith({a})"


@dataclass(frozen=True)
class PathField:
    """A path in FineTuneJobSpec: its wire name (`storage.output`), the CEL that says it is set (relative to
    the spec), and its value in Python."""

    wire: str
    cel_present: tuple[str, ...]
    """CEL conditions that hold when the path is set: every object on the way, and the field itself."""
    value: Callable[[Any], str | None]

    @property
    def cel(self) -> str:
        return f"self.{self.wire}"


def _optional(*names: str) -> Callable[[Any], str | None]:
    """The attribute at `names` below the spec, None where any step is unset."""

    def read(spec: Any) -> str | None:
        node = spec
        for name in names:
            node = getattr(node, name, None)
            if node is None:
                return None
        return str(node)

    return read


def _present(wire: str) -> tuple[str, ...]:
    parts = wire.split(".")
    return tuple(f"has(self.{'.'.join(parts[: i + 1])})" for i in range(len(parts)))


def _field(wire: str, *names: str) -> PathField:
    return PathField(wire, _present(wire), _optional(*names))


OUTPUT = _field("storage.output", "storage", "output")
CHECKPOINTS = _field("storage.checkpoints", "storage", "checkpoints")
TRAIN = _field("dataset.train", "dataset", "train")
VALIDATION = _field("dataset.validation", "dataset", "validation")
TEST = _field("dataset.test", "dataset", "test")
MODEL = _field("model.source", "model", "source")
REFERENCE_MODEL = _field("evaluation.referenceModel.source", "evaluation", "reference_model", "source")

#: What each written folder may not overlap, and why, said in the refusal.
_INPUTS = (TRAIN, VALIDATION, TEST, MODEL, REFERENCE_MODEL)
_OUTPUT_WHY = "the export replaces the output folder and everything in it"
_CHECKPOINTS_WHY = "checkpoints would be written among the job's inputs, and pruning deletes folders there"
_PAIRS: tuple[tuple[PathField, PathField, str], ...] = (
    (
        OUTPUT,
        CHECKPOINTS,
        f"{_OUTPUT_WHY} (leave `storage.output` unset to export to `output/` beside the checkpoints)",
    ),
    *((OUTPUT, other, _OUTPUT_WHY) for other in _INPUTS),
    *((CHECKPOINTS, other, _CHECKPOINTS_WHY) for other in _INPUTS),
)


def _overlap_rule(written: PathField, other: PathField, why: str) -> Rule:
    both = " && ".join(dict.fromkeys(written.cel_present + other.cel_present))  # each condition once

    def check(spec: Any) -> bool:
        a, b = written.value(spec), other.value(spec)
        return a is None or b is None or not overlaps(a, b)

    return Rule(
        cel=f"!({both}) || !({cel_overlaps(written.cel, other.cel)})",
        check=check,
        message=f"`{written.wire}` must not be, contain or lie inside `{other.wire}`: {why}",
        field=written.wire,
    )


#: FineTuneJobSpec's rules: no folder the job writes overlaps another it writes or reads.
OVERLAP_RULES: list[Rule] = [_overlap_rule(written, other, why) for written, other, why in _PAIRS]


def plain_path_rule(field: str) -> Rule:
    """A model's rule: its path `field` (one word: the wire and Python names agree), when `pvc://`, is
    written plainly (`is_plain`)."""
    return Rule(
        cel=f"!has(self.{field}) || !self.{field}.startsWith('pvc://') || "
        f"(self.{field}.matches('{PLAIN_PVC_PATTERN}') && !self.{field}.matches('{DOT_SEGMENT_PATTERN}'))",
        check=lambda model: is_plain(getattr(model, field)),
        message=f"`{field}`: write the `pvc://` path plainly, without an empty (`//`), `.` or `..` segment, so "
        "that the folders a job reads and writes can be compared (and `..` would leave the claim)",
        field=field,
    )
