"""The chart's generated files equal their sources (as the CRD does), and values.yaml is documented
field by field and described by values.schema.json key for key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.monitoring import generate
from tests.support.chart import CHART_DIR, ROOT

pytestmark = pytest.mark.timeout(60)

VALUES = CHART_DIR / "values.yaml"
SCHEMA = CHART_DIR / "values.schema.json"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*|\"[^\"]+\"):")


@pytest.mark.parametrize("path", sorted(generate.CHART_FILES), ids=str)
def test_generated_chart_file_matches_its_source(path: Path) -> None:
    assert (ROOT / path).read_text() == generate.CHART_FILES[path](), f"{path} is stale: run `make generate`"


def test_chart_crd_copy_equals_the_projects_crd() -> None:
    assert (CHART_DIR / "files/crds/finetunejob.yaml").read_text() == (ROOT / "crds/finetunejob.yaml").read_text()


def test_readme_metrics_table_matches_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    assert generate.TABLE_START in readme, "README.md lacks the generated metrics table"
    assert generate.readme_with_table(readme) == readme, "README.md's metrics table is stale: run `make generate`"


def _undocumented_keys(lines: list[str]) -> list[str]:
    """Key paths of values.yaml without a `# --` comment above them. Keys inside a documented key's
    value (e.g. the `requests` of a documented `resources`) are covered by it; a key whose value is a map
    of documented keys needs no comment of its own."""
    undocumented: list[str] = []
    stack: list[tuple[str, bool]] = []
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        depth = len(match["indent"]) // 2
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#") and not lines[above].strip().startswith("# --"):
            above -= 1
        documented = above >= 0 and lines[above].strip().startswith("# --")
        stack = [*stack[:depth], (match["key"], documented)]
        covered = any(doc for _, doc in stack)
        is_parent = line.rstrip().endswith(":")
        if not covered and not is_parent:
            undocumented.append(".".join(key for key, _ in stack))
    return undocumented


def test_every_value_is_documented() -> None:
    assert _undocumented_keys(VALUES.read_text().splitlines()) == []


def _schema_paths(node: dict[str, Any], definitions: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in node:
        node = definitions[node["$ref"].rsplit("/", 1)[1]]
    paths: set[str] = set()
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        paths.add(path)
        paths |= _schema_paths(child, definitions, f"{path}.")
    return paths


def _value_paths(values: dict[str, Any], schema_paths: set[str], prefix: str = "") -> set[str]:
    """Key paths of values.yaml, not descending into free-form maps (those the schema does not list)."""
    paths: set[str] = set()
    for name, value in values.items():
        path = f"{prefix}{name}"
        paths.add(path)
        if isinstance(value, dict) and any(p.startswith(f"{path}.") for p in schema_paths):
            paths |= _value_paths(value, schema_paths, f"{path}.")
    return paths


def test_schema_describes_exactly_the_values() -> None:
    schema = json.loads(SCHEMA.read_text())
    schema_paths = _schema_paths(schema, schema["definitions"])
    value_paths = _value_paths(yaml.safe_load(VALUES.read_text()), schema_paths)
    assert value_paths == schema_paths
