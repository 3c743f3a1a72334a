"""The building blocks every API model shares.

The FineTuneJob API is written once, as pydantic models; the CRD, `kubetune validate`, the trainer's
configuration and the status the operator writes are all derived from them. This module fixes the
conventions those derivations rely on: camelCase names on the wire, unknown fields rejected (never
pruned silently), and a helper that makes every field carry its `kubectl explain` text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

#: Longest string the API accepts where nothing tighter applies. Kubernetes' CEL cost estimator needs
#: a bound on every string and list a rule may touch; 4 KiB is far beyond any path or name here.
MAX_STRING_LENGTH = 4096


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written once in two languages that must agree.

    `cel` goes into the CRD as an `x-kubernetes-validations` rule on the model's schema (the API server
    enforces it); `check` is the same rule in Python (pydantic, `kubetune validate`, the local runner).
    A test evaluates both on a table of manifests with a real CEL interpreter and fails if they differ.
    `field` names the offending field, relative to the model, for messages (empty: the model itself).
    """

    cel: str
    check: Callable[[Any], bool]
    message: str
    field: str = ""


def _add_cel_rules(schema: dict[str, Any], model: type[BaseModel]) -> None:
    rules: list[Rule] = getattr(model, "rules", [])
    if rules:
        schema["x-kubernetes-validations"] = [
            {"rule": rule.cel, "message": rule.message} | ({"fieldPath": f".{rule.field}"} if rule.field else {})
            for rule in rules
        ]


class ApiModel(BaseModel):
    """A part of the FineTuneJob API: camelCase on the wire, strict about unknown fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        json_schema_extra=_add_cel_rules,
    )

    #: Cross-field rules of this model (see `Rule`).
    rules: ClassVar[list[Rule]] = []

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in self.rules:
            if not rule.check(self):
                # The error type `rule` and its `field` let `kubetune validate` name the exact field.
                raise PydanticCustomError("rule", rule.message, {"field": rule.field})
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as it is written in a manifest or a status patch (camelCase, no unset nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def doc(description: str, **kwargs: Any) -> Any:
    """A pydantic Field whose description becomes the CRD's `kubectl explain` text."""
    return Field(description=description, **kwargs)
