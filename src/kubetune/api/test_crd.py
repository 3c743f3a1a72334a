"""The generated CRD: no drift from the models, structurally valid, accepted by the apiextensions schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.api.crd import custom_resource_definition, open_api_schema, render_crd_yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_checked_in_crd_matches_the_models() -> None:
    checked_in = (ROOT / "crds" / "finetunejob.yaml").read_text()
    assert checked_in == render_crd_yaml(), "crds/finetunejob.yaml is stale: run `make crd`"


def test_crd_is_a_valid_customresourcedefinition() -> None:
    kubernetes_validate.validate(custom_resource_definition(), "1.30.0", strict=True)


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize(("path", "node"), _walk(open_api_schema()), ids=lambda v: v if isinstance(v, str) else "")
def test_schema_node_is_structural(path: str, node: dict[str, Any]) -> None:
    """Kubernetes' structural-schema rules, node by node."""
    assert "$ref" not in node and "$defs" not in node, path
    assert node.get("type") or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
    assert not ("properties" in node and "additionalProperties" in node), path
    assert "anyOf" not in node and "oneOf" not in node, path
    assert "title" not in node and "patternProperties" not in node, path
    if isinstance(node.get("exclusiveMinimum"), bool):
        assert "minimum" in node, path
    if path.startswith(".spec") and node.get("type") == "string":
        assert "maxLength" in node or "format" in node or "enum" in node, f"{path}: CEL cost estimation needs maxLength"
    if "enum" in node:
        assert "maxLength" not in node, f"{path}: an enum's maxLength would say 'Too long' before 'Unsupported value'"
    if node.get("x-kubernetes-int-or-string") and path.startswith(".spec"):
        assert "maxLength" in node, f"{path}: CEL cost estimation needs maxLength"
    if path.startswith(".spec") and node.get("type") == "array":
        assert "maxItems" in node, f"{path}: CEL cost estimation needs maxItems"


def test_every_field_is_documented() -> None:
    undocumented = [p for p, n in _walk(open_api_schema()) if p.count(".") >= 2 and not n.get("description")]
    assert not [p for p in undocumented if not p.endswith(("{}", "[]"))]


def test_crd_has_the_printer_columns_and_names() -> None:
    crd = custom_resource_definition()
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Progress", "Train loss", "Eval loss", "Restarts", "Age",
    ]  # fmt: skip
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert crd["spec"]["names"]["categories"] == ["kubetune"]


def _openapi_to_draft4(node: Any) -> Any:
    """OpenAPI 3.0's exclusiveMinimum/Maximum booleans are draft-4 semantics; drop the Kubernetes keys."""
    if isinstance(node, dict):
        return {k: _openapi_to_draft4(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if isinstance(node, list):
        return [_openapi_to_draft4(v) for v in node]
    return node


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_satisfy_the_crd_schema(example: Path) -> None:
    """The examples are accepted by the CRD's own schema, not only by pydantic."""
    schema = _openapi_to_draft4(open_api_schema())
    jsonschema.Draft4Validator(schema).validate(yaml.safe_load(example.read_text()))
