"""Kubernetes' own syntax, ported so that the API models refuse what the API server refuses: qualified names
(label keys, toleration keys), label values, DNS subdomains and resource quantities (a port of
`resource.ParseQuantity`, fuzzed against the Go function), each with the CEL the CRD uses for the same rule.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Context, Decimal, localcontext
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt
from pydantic_core import PydanticCustomError

#: Resource names a trainer pod may request: the core ones and vendor extended resources.
RESOURCE_NAME_PATTERN = r"^(cpu|memory|ephemeral-storage|hugepages-[0-9A-Za-z]+|[a-z0-9.-]+/[a-z0-9._-]+)$"

# Kubernetes' own syntax, as k8s.io/apimachinery checks it when the operator creates a pod (`IsLabelValue`,
# `IsQualifiedName`, `IsDNS1123Subdomain`, `resource.ParseQuantity`): a job the API accepts never builds a
# pod the API server refuses. (`[.]` rather than `\.`: the patterns go into CEL string literals as they are.)

#: A label value, or the name part of a qualified name: alphanumeric at both ends, `-`, `_` and `.` between.
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
#: A label value: empty or a name, at most 63 characters.
LABEL_VALUE_PATTERN = rf"^({_NAME})?$"
LABEL_VALUE_MAX_LENGTH = 63
#: A DNS-1123 subdomain (at most 253 characters, checked apart): lower-case labels joined by dots.
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
#: Longest qualified name: a 253-character prefix, `/` and a 63-character name.
QUALIFIED_NAME_MAX_LENGTH = 317


def is_qualified_name(value: str) -> bool:
    """Kubernetes' `IsQualifiedName` (label keys, node-selector keys, toleration keys): a name of at most
    63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends, after an optional DNS-1123 subdomain
    prefix of at most 253 characters and a `/`."""
    parts = value.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2 and not (0 < len(parts[0]) <= 253 and re.fullmatch(_SUBDOMAIN, parts[0])):
        return False
    return 0 < len(parts[-1]) <= 63 and re.fullmatch(_NAME, parts[-1]) is not None


def qualified_name_cel(expression: str) -> str:
    """`is_qualified_name` of a CEL string expression: the syntax with the 63-character name part in one
    RE2 pattern, the 253-character prefix in a second one (one pattern cannot also bound a subdomain)."""
    syntax = f"^({_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
    return f"{expression}.matches('{syntax}') && {expression}.matches('^([^/]{{0,253}}/)?[^/]*$')"


QUALIFIED_NAME_TEXT = (
    "a qualified name: up to 63 of A-Z, a-z, 0-9, '-', '_' and '.', starting and ending alphanumeric, "
    "optionally after a DNS subdomain prefix and '/' (e.g. example.com/gpu-type)"
)
LabelValue = Annotated[str, Field(max_length=LABEL_VALUE_MAX_LENGTH, pattern=LABEL_VALUE_PATTERN)]

#: Longest quantity string the API accepts. Kubernetes sets none, but CEL's cost estimate needs a bound on
#: the strings its rules compare, and no real quantity comes near it.
QUANTITY_MAX_LENGTH = 64
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DIGITS = "0123456789"
_INT64_MAX = 2**63 - 1
_NANO = Decimal("1e-9")


def _int32(value: int) -> int:
    """Go's int32 conversion (wraps around)."""
    return (value + 2**31) % 2**32 - 2**31


def _go_parse_int64(text: str) -> int | None:
    """Go's `strconv.ParseInt(text, 10, 64)`."""
    if not re.fullmatch(r"[+-]?[0-9]+", text) or not -(2**63) <= int(text) <= _INT64_MAX:
        return None
    return int(text)


def parse_quantity(text: str) -> Decimal | None:
    """The value Kubernetes gives a quantity string, or None where it refuses it: a port of
    `resource.ParseQuantity` (k8s.io/apimachinery), which CEL's `isQuantity` and `quantity` call, quirks and
    all: `1.5`, `500m`, `64Gi`, `1e3` and `1E3` are quantities, `lots`, `1.2.3`, `1e` and `1K` are not, and
    neither is the empty string; `+`, `.` and a bare suffix such as `Mi` are zero; values are rounded up to
    whole nano-units and binary ones capped at 2^63-1, as Kubernetes stores them."""
    if text == "":
        return None
    # parseQuantityString: [sign] leading zeros, digits [. digits], then the suffix
    end, position, negative = len(text), 0, text[0] == "-"
    if text[0] in "+-":
        position = 1
    while position < end and text[position] == "0":
        position += 1
    if position == end:
        return Decimal(0)
    start = position
    while position < end and text[position] in _DIGITS:
        position += 1
    numerator, denominator = text[start:position] or "0", ""
    if position < end and text[position] == ".":
        position += 1
        start = position
        while position < end and text[position] in _DIGITS:
            position += 1
        denominator = text[start:position]
    number, suffix = text[:position], text[position:]
    if not re.fullmatch(r"[eEinumkKMGTP]*[-+]?[0-9]*", suffix):
        return None
    # suffixHandler.interpret
    if suffix in _DECIMAL_SUFFIXES:
        base, exponent = 10, _DECIMAL_SUFFIXES[suffix]
    elif suffix in _BINARY_SUFFIXES:
        base, exponent = 2, _BINARY_SUFFIXES[suffix]
    elif len(suffix) > 1 and suffix[0] in "eE" and (parsed := _go_parse_int64(suffix[1:])) is not None:
        base, exponent = 10, _int32(parsed)
    else:
        return None
    digits = numerator + denominator
    # Go's fast path, exact in an int64: few enough digits and no finer than nano (decimal suffixes), or
    # no fraction and no overflow (binary ones).
    if base == 10:
        scale = _int32(exponent - len(denominator))
        fast = len(digits) <= 18 and scale >= -9
    else:
        scale = 0
        fast = not denominator and 15 - len(numerator) - exponent * 3 // 10 - 1 >= 0
        fast = fast and int(digits) << exponent <= _INT64_MAX
    with localcontext(Context(prec=len(digits) + 40, Emax=999_999_999_999, Emin=-999_999_999_999)):
        if fast:
            value = Decimal(int(digits)).scaleb(scale) if base == 10 else Decimal(int(digits) << exponent)
        elif not any(character in _DIGITS for character in number):
            return None  # the slow path's inf.Dec finds no digit before the suffix
        else:
            value = Decimal(int(digits))
            if base == 10:
                value = value.scaleb(-_int32(len(denominator) - exponent))
            else:
                value = value.scaleb(-len(denominator)) * 2**exponent
            if value and value.as_tuple().exponent < -9:  # type: ignore[operator]
                value = value.quantize(_NANO, rounding=ROUND_UP)  # away from zero, to whole nano-units
            if base == 2:
                value = min(value, Decimal(_INT64_MAX))
        return -value if negative else value


def quantity_value(value: int | str) -> Decimal | None:
    """A quantity as a number (an int is one as it is); None when it is no quantity."""
    return Decimal(value) if isinstance(value, int) else parse_quantity(value)


#: The CRD's check of one quantity (CEL, Kubernetes 1.29+ quantity library); `_quantity` is the same in Python.
QUANTITY_CEL = "type(self) == int ? self >= 0 : isQuantity(self) && sign(quantity(self)) >= 0"
QUANTITY_MESSAGE = "must be a Kubernetes quantity such as 500m, 16Gi or 2, and not negative"


def _integer_or_string(value: object) -> object:
    """What an x-kubernetes-int-or-string field holds: the API server refuses any other JSON type, and a
    float even when it is whole (one error here, not one per branch of the union)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("int_or_string", "must be a quantity string such as 500m or 16Gi, or an integer")
    return value


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and len(value) > QUANTITY_MAX_LENGTH:
        raise PydanticCustomError("string_too_long", "too long", {"max_length": QUANTITY_MAX_LENGTH})
    if isinstance(value, int) and value > _INT64_MAX:  # JSON integers on the API server are int64
        raise PydanticCustomError("less_than_equal", "too large", {"le": _INT64_MAX})
    number = quantity_value(value)
    if number is None:
        raise PydanticCustomError(
            "string_pattern_mismatch", "not a Kubernetes quantity", {"pattern": "a quantity such as 500m, 16Gi, 2"}
        )
    if number < 0:
        raise PydanticCustomError("greater_than_equal", "negative", {"ge": 0})
    return value


Quantity = Annotated[
    str | StrictInt,  # "8" stays a string (its canonical wire form); 8 stays a number; a float is neither
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "maxLength": QUANTITY_MAX_LENGTH,
            "x-kubernetes-validations": [{"rule": QUANTITY_CEL, "message": QUANTITY_MESSAGE}],
        },
        union_mode="left_to_right",
    ),
    BeforeValidator(_integer_or_string),
    AfterValidator(_quantity),
]


def cel_quantity(expression: str) -> str:
    return f"quantity(type({expression}) == int ? string({expression}) : {expression})"


def cel_is_quantity(expression: str) -> str:
    return f"(type({expression}) == int || isQuantity({expression}))"
