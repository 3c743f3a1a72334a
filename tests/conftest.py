"""Suite-wide settings: markers that need hardware or a cluster are skipped unless asked for."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_gpu = shutil.which("nvidia-smi") is not None
    cluster = os.environ.get("KUBETUNE_CLUSTER_TESTS") == "1"
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
        if "cluster" in item.keywords and not cluster:
            item.add_marker(pytest.mark.skip(reason="real-cluster suite: set KUBETUNE_CLUSTER_TESTS=1 and KUBECONFIG"))
