"""Writing CEL from Python: the few helpers the admission policies' rules share.

The policies' CEL is generated (src/kubetune/api/admission.py, platform_rules.py) so that each rule's
Python twin sits beside it; these helpers keep the two reading the spec the same way: by wire path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Spec = Mapping[str, Any]
"""A FineTuneJob's spec as stored (wire names): what CEL's `object.spec` sees."""


def literal(text: str) -> str:
    """`text` as a CEL string literal (single-quoted; the texts here never hold quotes or backslashes)."""
    assert "'" not in text and "\\" not in text, text
    return f"'{text}'"


def has_chain(path: tuple[str, ...], root: str = "object.spec") -> str:
    """`has(object.spec.a) && has(object.spec.a.b)` for path (a, b)."""
    return " && ".join(f"has({root}.{'.'.join(path[: i + 1])})" for i in range(len(path)))


def value_at(spec: Spec, path: tuple[str, ...]) -> Any:
    """The value at a wire path of `spec`, None where any part is absent (what `has_chain` guards in CEL)."""
    value: Any = spec
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value
