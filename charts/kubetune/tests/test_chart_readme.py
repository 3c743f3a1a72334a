"""The chart's README.md is helm-docs' rendering of README.md.gotmpl and values.yaml's `# --` comments.

helm-docs (github.com/norwoodj/helm-docs) is built from source with Go into .cache/bin by the Makefile
(`make chart-docs`, pinned by HELM_DOCS_VERSION). This test builds it when it is missing, runs the
Makefile's own `chart-docs` command on a copy of the chart in a temporary folder (the same flags as
the real regeneration, and nothing in the repository is written) and compares the result with the
committed README. Without Go the test fails, saying so: a README that cannot be checked is not skipped.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.chart import CHART_DIR, ROOT

# Building helm-docs the first time: about 20-45 s on two cores, more when Go fetches its modules.
pytestmark = pytest.mark.timeout(600)

HELM_DOCS = ".cache/bin/helm-docs"


def _make(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    if make is None:
        pytest.fail("`make` is needed: the Makefile builds and runs helm-docs (`make chart-docs`)")
    return subprocess.run(
        [make, "-s", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def _helm_docs_built() -> None:
    built = _make(HELM_DOCS, timeout=540)
    if built.returncode != 0:
        pytest.fail(
            f"could not build helm-docs, which renders charts/kubetune/README.md (`make {HELM_DOCS}`: "
            "`go install github.com/norwoodj/helm-docs/cmd/helm-docs`; it needs Go 1.22 or later and the Go module "
            f"proxy):\n{built.stdout}{built.stderr}"
        )


def test_chart_readme_is_generated_from_values(tmp_path: Path) -> None:
    _helm_docs_built()
    copy = tmp_path / "kubetune"
    shutil.copytree(CHART_DIR, copy, ignore=shutil.ignore_patterns("tests", "__pycache__", "README.md"))
    rendered = _make("chart-docs", f"CHART_DOCS_DIR={copy}", timeout=120)
    assert rendered.returncode == 0, f"`make chart-docs` failed:\n{rendered.stdout}{rendered.stderr}"
    assert (copy / "README.md").exists(), f"helm-docs wrote no README.md:\n{rendered.stdout}{rendered.stderr}"

    expected = (copy / "README.md").read_text()
    committed = (CHART_DIR / "README.md").read_text() if (CHART_DIR / "README.md").exists() else ""
    if committed != expected:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "charts/kubetune/README.md (committed)",
                "charts/kubetune/README.md (from values.yaml)",
            )
        )
        pytest.fail(f"charts/kubetune/README.md is stale: run `make chart-docs`\n{diff}")


def test_every_value_row_has_a_description() -> None:
    """helm-docs reads `# key -- text` as the old comment form, so a description with " --" inside (a
    flag such as `kubetune operator --help`) loses its text silently: write flags as `--flag` alone."""
    rows = [line for line in (CHART_DIR / "README.md").read_text().splitlines() if line.startswith("| ")]
    values = [row for row in rows[1:] if not row.startswith("|--")]
    assert values, "charts/kubetune/README.md has no values table"
    empty = [
        row.split("|")[1].strip() for row in values if not row.rstrip().removesuffix("|").rsplit("|", 1)[1].strip()
    ]
    assert empty == [], f"values with an empty description in the README (a ' --' in their comment?): {empty}"


def test_readme_template_is_not_packaged() -> None:
    ignored = (CHART_DIR / ".helmignore").read_text().splitlines()
    assert "README.md.gotmpl" in ignored
    assert "tests/" in ignored
