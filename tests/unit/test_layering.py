"""The product's layering holds: the operator never imports torch, the trainer never the operator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_operator_and_api_does_not_import_torch() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import kubetune.operator, kubetune.api, kubetune.policies, kubetune.cli\n"
        "for pkg in (kubetune.operator, kubetune.api, kubetune.policies):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if '.test_' not in m.name: importlib.import_module(m.name)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'datasets') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
    return names


def test_trainer_never_imports_the_operator() -> None:
    assert not {n for n in _imports(ROOT / "trainer") if n.startswith(("kubetune.operator", "kopf", "kubernetes"))}


def test_shared_core_imports_neither_side() -> None:
    for folder in ("kubetune/api", "kubetune/policies"):
        sides = {n for n in _imports(ROOT / folder) if n.startswith(("kubetune.operator", "kubetune.trainer", "torch"))}
        assert not sides, (folder, sides)


def test_every_listed_package_exists() -> None:
    """pyproject lists packages by hand (the folder mapping defeats discovery); none may be missing."""
    import importlib
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in listed:
        importlib.import_module(package)
    found = {p.parent for p in (ROOT / "kubetune").rglob("__init__.py")}
    assert len(found) == len([p for p in listed if not p.startswith(("kubetune.operator", "kubetune.trainer"))])
