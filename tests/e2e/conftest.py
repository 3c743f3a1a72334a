"""Session fixtures of the end-to-end suite: one emulated API server with the real operator, and one
process kubelet, shared by every e2e test (each test uses its own namespace, so jobs never meet)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import E2ECluster
from tests.e2e.kubelet import ProcessKubelet


def image_environment() -> dict[str, str]:
    """What the trainer image would provide: this project's venv on PATH, offline hub, one thread per
    process (two "pods" share the machine's two cores), and the DeepSpeed op cache of this user (an image
    ships its ops prebuilt; a pod's HOME is an emptyDir, so without it every pod would compile them)."""
    venv_bin = str(Path(sys.executable).parent)
    home = Path.home()
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(home / ".cache" / "torch_extensions")),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }


@pytest.fixture(scope="session")
def cluster() -> Iterator[E2ECluster]:
    """The emulated API server and the real operator (in-process), for the whole session."""
    running = E2ECluster().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def kubelet(cluster: E2ECluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessKubelet]:
    """The node: runs every pod of the emulator as local processes."""
    node = ProcessKubelet(cluster.url, tmp_path_factory.mktemp("node"), image_environment()).start()
    try:
        yield node
    finally:
        node.stop()
