"""`kubetune validate`: every problem in a set of manifests, one line each, naming file, line and field.

The same pydantic models that configure the trainer and type the operator's objects decide what is
valid, and the cross-field rules are the ones the CRD's CEL rules express (`kubetune.api.base.Rule`),
so a manifest this accepts is one the cluster accepts. Messages are rewritten from pydantic's wording
into the form `job.yaml:12: spec.hyperparameters.learningRate: must be greater than 0 (got -1)`, and a
misspelt field name or enum value gets a "did you mean" (`eval_loss` -> `evalLoss`): the first hour
with a new tool is mostly spent on such typos.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from kubetune.api.job import FineTuneJob


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one manifest."""

    source: str
    field: str
    message: str
    line: int | None = None
    document: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        which = f"document {self.document}: " if self.document else ""
        return f"{where}: {which}{self.field + ': ' if self.field else ''}{self.message}"


@dataclass(frozen=True)
class Document:
    """One YAML document of a file, with the node tree that knows its line numbers."""

    source: str
    content: Any
    node: yaml.Node | None
    index: int | None = None
    """1-based position in a multi-document file; None when the file holds one document."""


def read_documents(path: str) -> Iterator[Document]:
    """The documents of a file (`-` for standard input). Raises `ManifestError` on unreadable input."""
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError(f"{name}: cannot read: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise ManifestError(f"{name}: not UTF-8 text ({error.reason} at byte {error.start})") from error
    try:
        nodes = [node for node in yaml.compose_all(text) if node is not None]
        contents = [yaml.safe_load(yaml.serialize(node)) for node in nodes]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ManifestError(f"{name}{line}: not valid YAML: {getattr(error, 'problem', error)}") from error
    if not nodes:
        raise ManifestError(f"{name}: no YAML document found")
    for index, (node, content) in enumerate(zip(nodes, contents, strict=True), start=1):
        yield Document(name, content, node, index if len(nodes) > 1 else None)


class ManifestError(Exception):
    """A manifest file that cannot be read or parsed at all."""


def _line_of(node: yaml.Node | None, location: tuple[str | int, ...]) -> int | None:
    """The 1-based line of the deepest part of `location` that exists in the YAML node tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            match = next((value for key, value in node.value if key.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            match = node.value[part]
        else:
            match = None
        if match is None:
            break
        node, line = match, match.start_mark.line + 1
    return line


def line_in(document: Document, location: tuple[str | int, ...]) -> int | None:
    """The 1-based line of `location` (or of its deepest part that exists) in `document`."""
    return _line_of(document.node, location)


def _leaf_types(annotation: Any) -> Iterator[Any]:
    """The types a field's annotation can hold, through `X | None`, `list[X]` and `dict[K, X]`; Literal
    annotations are yielded whole (their values are what an enum field allows)."""
    if get_origin(annotation) is Literal or isinstance(annotation, type):
        yield annotation
        return
    for argument in get_args(annotation):
        yield from _leaf_types(argument)


def _annotation_at(location: tuple[str | int, ...]) -> Any:
    """The annotation of the field at `location` (FineTuneJob itself for the empty location), stepping
    over list indexes; None when some part of the location is not a known field."""
    annotation: Any = FineTuneJob
    for part in location:
        if isinstance(part, int):
            continue
        model = _model_in(annotation)
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None) if model else None
        if field is None:
            return None
        annotation = field.annotation
    return annotation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    models = [t for t in _leaf_types(annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    return models[0] if models else None


def _model_at(location: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields live at `location` (for "did you mean" on field names)."""
    return _model_in(_annotation_at(location))


def _allowed_values(location: tuple[str | int, ...]) -> list[str]:
    """The string values an enum-like field (a Literal or an Enum) at `location` accepts."""
    values: list[Any] = []
    for leaf in _leaf_types(_annotation_at(location)):
        if get_origin(leaf) is Literal:
            values += get_args(leaf)
        elif isinstance(leaf, type) and issubclass(leaf, Enum):
            values += [member.value for member in leaf]
    return [value for value in values if isinstance(value, str)]


def _normalised(text: str) -> str:
    return "".join(character for character in text.lower() if character.isalnum())


def closest_value(given: str, allowed: Sequence[str]) -> str | None:
    """The allowed value the user most likely meant: the same letters in another case or spelling
    (`eval_loss` for `evalLoss`), the only value that contains what was written or is contained in it
    (`gpu` for `nvidia-gpu`), else a close spelling; None when nothing is close enough to suggest."""
    wanted = _normalised(given)
    if not wanted:
        return None
    by_form = {_normalised(value): value for value in allowed}
    if wanted in by_form:
        return by_form[wanted]
    overlapping = [v for form, v in by_form.items() if len(wanted) >= 3 and (wanted in form or form in wanted)]
    if len(overlapping) == 1:
        return overlapping[0]
    close = difflib.get_close_matches(wanted, list(by_form), n=1, cutoff=0.75)
    return by_form[close[0]] if close else None


def _describe(error: Any, allowed: Sequence[str] = ()) -> str:
    """pydantic's error rewritten the way the API's own docs speak; `allowed`: the values an enum field
    takes, for a "did you mean" on a misspelt one."""
    kind, value = error["type"], error.get("input")
    ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in error.get("ctx", {}).items()}
    got = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    bounds = {
        "greater_than": f"must be greater than {ctx.get('gt')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "string_too_short": f"must be at least {ctx.get('min_length')} characters",
        "too_long": f"must have at most {ctx.get('max_length')} entries",
        "too_short": f"must have at least {ctx.get('min_length')} entries",
        "string_pattern_mismatch": f"does not match the expected form {ctx.get('pattern')}",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "enum": f"must be one of {ctx.get('expected')}",
    }
    if kind in ("literal_error", "enum") and isinstance(value, str) and (meant := closest_value(value, allowed)):
        return f"must be one of {ctx.get('expected')} (got {value!r}; did you mean {meant!r}?)"
    if kind in bounds:
        return bounds[kind] + got
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "rule":
        return str(error["msg"])
    return f"{error['msg'][0].lower()}{error['msg'][1:]}{got}"


def _problem(document: Document, error: Any) -> Problem:
    location: tuple[str | int, ...] = tuple(part for part in error["loc"] if part != "[key]")
    message = _describe(error, _allowed_values(location) if error["type"] in ("literal_error", "enum") else ())
    if error["type"] == "rule" and error.get("ctx", {}).get("field"):
        location = (*location, *error["ctx"]["field"].split("."))  # a rule may name a nested field
    if error["type"] == "extra_forbidden":
        owner = _model_at(location[:-1])
        known = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.5)
        message += f" (did you mean {close[0]!r}?)" if close else f" (known fields: {', '.join(known)})"
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in location).lstrip(".")
    return Problem(document.source, field, message, _line_of(document.node, location), document.index)


def validate_document(document: Document) -> tuple[FineTuneJob | None, list[Problem]]:
    """The job a document describes, or every problem with it."""
    if not isinstance(document.content, dict):
        kind = type(document.content).__name__
        problem = Problem(
            document.source, "", f"expected a FineTuneJob object, got a YAML {kind}", None, document.index
        )
        return None, [problem]
    try:
        return FineTuneJob.model_validate(document.content), []
    except ValidationError as error:
        return None, [_problem(document, e) for e in error.errors()]


def validate_files(paths: Iterable[str]) -> tuple[list[FineTuneJob], list[Problem | str]]:
    """Every valid job and every problem across the given files."""
    jobs: list[FineTuneJob] = []
    problems: list[Problem | str] = []
    for path in paths:
        try:
            for document in read_documents(path):
                job, found = validate_document(document)
                problems.extend(found)
                if job is not None:
                    jobs.append(job)
        except ManifestError as error:
            problems.append(str(error))
    return jobs, problems


def load_job(path: str) -> FineTuneJob:
    """The single FineTuneJob in a file; raises `ManifestError` listing every problem otherwise."""
    jobs, problems = validate_files([path])
    if problems:
        raise ManifestError("\n".join(str(p) for p in problems))
    if len(jobs) != 1:
        raise ManifestError(f"{path}: expected exactly one FineTuneJob, found {len(jobs)}")
    return jobs[0]
