"""Version skew: a FineTuneJob written under a newer CRD than this operator knows.

During an upgrade (or a rollback) the CRD can be newer than the operator: the API server then stores
fields the operator's models do not have. The models forbid unknown fields, which is right for a user's
manifest (`kubetune validate`: a typo must not pass silently) but wrong here: a job must not fail because
the operator is older than its schema. `without_unknown_fields` removes exactly the fields pydantic names
as unknown and returns their paths, so the operator can run the job as it understands it and say, in a
Warning Event, which fields it ignored. Any other validation error still fails the job.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

#: pydantic's error type for a field the model does not declare.
UNKNOWN_FIELD_ERROR = "extra_forbidden"


def unknown_field_paths(error: ValidationError) -> list[tuple[str | int, ...]] | None:
    """The locations of the unknown fields in `error`; None when it reports anything else as well."""
    errors = error.errors()
    if not errors or any(e["type"] != UNKNOWN_FIELD_ERROR for e in errors):
        return None
    return [tuple(e["loc"]) for e in errors]


def _remove(document: Any, path: Sequence[str | int]) -> None:
    parent = document
    for part in path[:-1]:
        try:
            parent = parent[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def without_unknown_fields(document: dict[str, Any], error: ValidationError) -> tuple[dict[str, Any], list[str]] | None:
    """(a copy of `document` without the fields `error` names as unknown, their dotted paths); None when
    `error` is about something else too (the document is invalid, not merely newer)."""
    paths = unknown_field_paths(error)
    if paths is None:
        return None
    cleaned = copy.deepcopy(document)
    for path in paths:
        _remove(cleaned, path)
    return cleaned, [".".join(str(part) for part in path) for path in paths]


def unknown_fields_message(paths: Sequence[str]) -> str:
    """The Warning Event's message."""
    fields = ", ".join(sorted(paths))
    return (
        f"ignored field(s) this operator does not know: {fields}. The FineTuneJob CRD is newer than the "
        "operator: upgrade the operator (helm upgrade) so that they take effect"
    )
