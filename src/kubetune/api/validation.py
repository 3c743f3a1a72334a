"""`kubetune validate`: every problem in a set of manifests, one line each, naming file, line and field.

The same pydantic models that configure the trainer and type the operator's objects decide what is
valid, and the cross-field rules are the ones the CRD's CEL rules express (`kubetune.api.base.Rule`),
so a manifest this accepts is one the cluster accepts. Messages are rewritten from pydantic's wording
into the form `job.yaml:12: spec.hyperparameters.learningRate: must be greater than 0 (got -1)`.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _model_at(location: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `location` (for "did you mean" suggestions)."""
    model: type[BaseModel] | None = FineTuneJob
    for part in location:
        if model is None or isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return model
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        model = next((a for a in candidates if issubclass(a, BaseModel)), None)
    return model


def _describe(error: Any) -> str:
    """pydantic's error rewritten the way the API's own docs speak."""
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
    }
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
    message = _describe(error)
    if error["type"] == "rule" and error.get("ctx", {}).get("field"):
        location = (*location, error["ctx"]["field"])
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
