"""The test tiers, decided by where a test lives (docs/testing.md), and the opt-in hardware tiers.

One rule: a unit test lives beside what it tests (`test_<module>.py` next to the module in its
distribution's src tree, the chart's tests in the chart, the bench's in bench/); every other test lives
in `tests/<tier>/`. This hook gives each test the marker of its tier, so `-m unit` or
`-m "unit or integration"` (make test-fast) selects by tier and no test can carry the wrong one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent
#: tests/<folder>/ -> the marker of the tier that folder holds
TIER_FOLDERS = {"integration": "integration", "e2e": "e2e", "slow": "slow", "cluster": "cluster"}


def tier_of(path: Path) -> str:
    """The tier of a test file from its location; a test under tests/ outside a tier folder is an error."""
    relative = path.resolve().relative_to(ROOT).parts
    if relative[0] != "tests":
        return "unit"
    if len(relative) > 2 and relative[1] in TIER_FOLDERS:
        return TIER_FOLDERS[relative[1]]
    raise pytest.UsageError(f"{path}: tests under tests/ live in a tier folder ({', '.join(TIER_FOLDERS)})")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with its tokenizer (tests/support/tiny.py), built once per session."""
    from tests.support import tiny  # transformers: imported only by the tests that need the model

    return tiny.tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The real control plane (tests/support/controlplane.py) with the FineTuneJob CRD applied, shared by
    the session's integration and end-to-end tests; its components' logs are kept in build/ on failure."""
    from tests.support.controlplane import ControlPlane
    from tests.support.kueue import CRDS as KUEUE_CRDS  # Kueue's, when `make kueue` built it (tests/e2e/test_kueue.py)

    kueue = [KUEUE_CRDS] if KUEUE_CRDS.is_dir() else []
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane")).start(crds=ROOT / "crds", extra_crds=kueue)
    try:
        yield plane
    finally:
        plane.stop()
        if request.session.testsfailed:
            kept = ROOT / "build" / "control-plane-logs"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(plane.folder / "logs", kept)
            print(f"\ncontrol plane logs kept in {kept}")


#: The order the tiers run in: fast feedback first, and the integration tier's control-plane tests before
#: the end-to-end tier installs and starts the operator on the same (session-wide) control plane.
TIER_ORDER = ("unit", "integration", "e2e", "slow", "cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = shutil.which("nvidia-smi") is not None
    cluster = os.environ.get("KUBETUNE_CLUSTER_TESTS") == "1"
    items.sort(key=lambda item: TIER_ORDER.index(tier_of(item.path)))  # stable: file order within a tier
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item.path)))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "cluster" in item.keywords and not cluster:
            item.add_marker(pytest.mark.skip(reason="real-cluster suite: set KUBETUNE_CLUSTER_TESTS=1 and KUBECONFIG"))
