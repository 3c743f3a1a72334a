"""The CustomResourceDefinition, generated from the pydantic models.

`kubetune crd` prints it and `crds/finetunejob.yaml` is its checked-in output (a test fails on drift).
pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema: no `$ref`,
every node typed, nullable unions collapsed to the plain type (absent means unset), `exclusiveMinimum`
as a boolean beside `minimum`, and no `additionalProperties: false` beside `properties`. Kubernetes
prunes unknown fields instead of rejecting them; `kubectl`'s default server-side field validation
(Strict) turns that into an error, and `kubetune validate` rejects them itself.

No library does this conversion for Kubernetes' dialect (the generic JSON-Schema-to-OpenAPI converters
keep `$ref` and nullable unions), so it is written here, small and tested against the apiextensions
schema.
"""

from __future__ import annotations

from typing import Any

import yaml

from kubetune.api.job import (
    CATEGORIES,
    GROUP,
    KIND,
    NAME_CEL_RULES,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJob,
    immutability_cel_rule,
)

#: Largest map (nodeSelector, resources) the CRD accepts; bounds the CEL cost of comparing specs.
MAX_MAP_ENTRIES = 64
_DROPPED_KEYS = {"title", "additionalProperties", "patternProperties", "propertyNames", "$defs"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.percent", "description": "percent"},
    {"name": "Train loss", "type": "number", "jsonPath": ".status.metrics.trainLoss"},
    {"name": "Eval loss", "type": "number", "jsonPath": ".status.metrics.evalLoss"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON-Schema node (and everything below it) to Kubernetes' dialect."""
    if "$ref" in node:
        resolved = defs[node["$ref"].rsplit("/", 1)[-1]]
        outer = {k: v for k, v in node.items() if k != "$ref"}
        return _structural({**resolved, **outer}, defs)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express this union structurally: {node['anyOf']}")
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        return _structural({**branches[0], **outer}, defs)
    if node.get("x-kubernetes-int-or-string"):
        kept = ("description", "x-kubernetes-int-or-string", "maxLength", "x-kubernetes-validations")
        return {k: v for k, v in node.items() if k in kept}

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "default" and (value is None or isinstance(value, list | dict))):
            continue
        if key == "properties":
            out["properties"] = {name: _structural(child, defs) for name, child in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs)
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    # Map keys: Kubernetes has no patternProperties; key patterns are checked by `kubetune validate` (and
    # resource names by the API server when the operator creates the pod).
    additional = node.get("additionalProperties") or next(iter(node.get("patternProperties", {}).values()), None)
    if isinstance(additional, dict):
        out["additionalProperties"] = _structural(additional, defs)
        out.setdefault("maxProperties", MAX_MAP_ENTRIES)
    # An enum gets no maxLength: its values bound CEL's cost estimate already, and a maxLength would answer
    # a wrong value with "Too long" instead of naming the supported values.
    return out


def open_api_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of a FineTuneJob."""
    pydantic_schema = FineTuneJob.model_json_schema(by_alias=True)
    defs = pydantic_schema.get("$defs", {})
    properties = pydantic_schema["properties"]
    return {
        "type": "object",
        "description": pydantic_schema.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion: kubetune.io/v1alpha1."},
            "kind": {"type": "string", "description": "Kind: FineTuneJob."},
            "metadata": {"type": "object"},
            "spec": _structural(properties["spec"], defs),
            "status": _structural(properties["status"], defs),
        },
        "x-kubernetes-validations": [*NAME_CEL_RULES, immutability_cel_rule()],
    }


def custom_resource_definition() -> dict[str, Any]:
    """The FineTuneJob CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kubetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """The CRD as the YAML checked in at `crds/finetunejob.yaml`."""
    header = "# Generated by `kubetune crd` from kubetune/api; do not edit by hand (`make crd` rewrites it).\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=120)
