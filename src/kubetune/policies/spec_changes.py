"""Spec changes after start: only `suspend` (and `scheduling`) may change; everything else is refused.

A running gang cannot change its model, data or shape midway: its checkpoints would no longer fit. On
a real API server the CRD's transition rule (kubetune.api.job.immutability_cel_rule) already rejects
such an update. Where that rule does not run (an API server without CEL, an emulator), the supervisor
keeps running the spec it launched with: `effective_spec` takes the frozen fields from the launched
spec and only `suspend` / `scheduling` from the live one, and `refused_fields` names what was ignored
(the operator reports it as a SpecChangeRefused warning event).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubetune.api.job import spec_fields_frozen_after_start


def refused_fields(launched: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Wire names of frozen spec fields whose live value differs from the launched one."""
    return [name for name in spec_fields_frozen_after_start() if launched.get(name) != live.get(name)]


def effective_spec(launched: Mapping[str, Any] | None, live: Mapping[str, Any]) -> dict[str, Any]:
    """The spec to act on (wire form): the live one before launch, else the launched one with the live
    mutable fields."""
    if launched is None:
        return dict(live)
    frozen = set(spec_fields_frozen_after_start())
    kept = {name: value for name, value in launched.items() if name in frozen}
    mutable = {name: value for name, value in live.items() if name not in frozen}
    return {**kept, **mutable}
