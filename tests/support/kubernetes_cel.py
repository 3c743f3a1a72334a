"""Kubernetes' CEL for tests, with cel-python: what the admission policies' parity tests evaluate.

cel-python has neither Kubernetes' `authorizer`, nor the strings extension (`split`, `trim`, `join`), nor
the lists and quantity libraries (`sum`, `max`, `quantity`, `isInteger`, `asInteger`, `asApproximateFloat`,
`compareTo`): the stand-ins below, here and only here, implement them as Kubernetes documents them (the
quantities with the port of Kubernetes' parser that pydantic uses); the real API server runs the same
policies in tests/e2e/test_admission.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes

from kubetune.api.admission import policy_specs
from kubetune.api.kubernetes_syntax import parse_quantity

#: Who asks, and where, in every request the tests evaluate.
USER, NAMESPACE = "system:serviceaccount:team-a:bob", "team-a"


@dataclass(frozen=True)
class Authorizer:
    """Kubernetes' CEL `authorizer`, answering from a set of (verb, resource, name) the user may do."""

    grants: frozenset[tuple[str, str, str]]
    asked: tuple[tuple[str, str], ...] = ()

    def then(self, key: str, value: Any) -> Authorizer:
        return Authorizer(self.grants, (*self.asked, (key, str(value))))

    def allowed(self) -> celtypes.BoolType:
        asked = dict(self.asked)
        assert asked["group"] == "" and asked["verb"] in ("get", "update") and asked["namespace"] == NAMESPACE, asked
        return celtypes.BoolType((asked["verb"], asked["resource"], asked["name"]) in self.grants)


def _step(key: str) -> Callable[[Authorizer, Any], Authorizer]:
    return lambda authorizer, value: authorizer.then(key, value)


class _Quantity:
    """Kubernetes' CEL Quantity, its value from the port of Kubernetes' parser."""

    def __init__(self, text: Any) -> None:
        value = parse_quantity(str(text))
        assert value is not None, text
        self.value = value

    def is_integer(self) -> celtypes.BoolType:
        return celtypes.BoolType(self.value == self.value.to_integral_value() and abs(self.value) < 2**63)

    def as_integer(self) -> celtypes.IntType:
        assert self.is_integer(), self.value
        return celtypes.IntType(int(self.value))

    def compare(self, other: _Quantity) -> celtypes.IntType:
        return celtypes.IntType((self.value > other.value) - (self.value < other.value))


STAND_INS: dict[str, Any] = {
    "split": lambda text, separator: celtypes.ListType(celtypes.StringType(p) for p in str(text).split(str(separator))),
    "trim": lambda text: celtypes.StringType(str(text).strip()),
    "join": lambda items, separator: celtypes.StringType(str(separator).join(str(i) for i in items)),
    "group": _step("group"),
    "resource": _step("resource"),
    "namespace": _step("namespace"),
    "name": _step("name"),
    "check": _step("verb"),
    "allowed": Authorizer.allowed,
    "sum": lambda items: celtypes.IntType(sum(int(i) for i in items)),
    "max": lambda items: celtypes.IntType(max(int(i) for i in items)),
    "quantity": _Quantity,
    "isInteger": _Quantity.is_integer,
    "asInteger": _Quantity.as_integer,
    "asApproximateFloat": lambda quantity: celtypes.DoubleType(float(quantity.value)),
    "compareTo": _Quantity.compare,
}
ENVIRONMENT = celpy.Environment()


def cel(expression: str, bound: dict[str, Any]) -> Any:
    """`expression` evaluated with the names in `bound` (an `activation`) and the stand-ins."""
    return ENVIRONMENT.program(ENVIRONMENT.compile(expression), functions=STAND_INS).evaluate(bound)


def activation(spec: dict[str, Any], old_spec: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """The names an admission policy sees for a create (or, with `old_spec`, an update) of a job with `spec`."""
    to_cel = celpy.json_to_cel  # type: ignore[attr-defined]
    request = {"operation": "UPDATE" if old_spec else "CREATE", "namespace": NAMESPACE, "userInfo": {"username": USER}}
    bound = {"object": to_cel({"spec": spec}), "request": to_cel(request)}
    if old_spec is not None:
        bound["oldObject"] = to_cel({"spec": old_spec})
    return bound | more


def cel_refusals(policy: str, bound: dict[str, Any]) -> list[str]:
    """The messages of every validation of `policy` (a key of policy_specs()) that refuses."""
    spec = policy_specs()[policy]
    variables: dict[Any, Any] = {}
    for variable in spec.get("variables", []):
        value = cel(variable["expression"], bound | {"variables": celtypes.MapType(variables)})
        variables[celtypes.StringType(variable["name"])] = value
    bound = bound | {"variables": celtypes.MapType(variables)}
    refused = [v for v in spec["validations"] if not cel(v["expression"], bound)]
    return [str(cel(v["messageExpression"], bound)) for v in refused]
