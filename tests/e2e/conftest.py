"""Session fixtures of the end-to-end suite, shared by every e2e test (each test uses its own namespace,
so jobs never meet): the real control plane with kubetune installed by its chart and the operator
running under the chart's RBAC (realcluster.py), and the process kubelet as two nodes (node.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.node import ScheduledKubelet
from tests.e2e.realcluster import RealCluster
from tests.support.controlplane import ControlPlane

#: The nodes the process kubelet registers (two, so that a node can be lost while the other one runs).
NODES = ["node-a", "node-b"]


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
def cluster(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """kubetune installed on the session's control plane, the operator running, for the whole session."""
    running = RealCluster(control_plane, tmp_path_factory.mktemp("cluster")).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def kubelet(cluster: RealCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScheduledKubelet]:
    """The nodes: run the pods the scheduler binds to them as local processes."""
    root = tmp_path_factory.mktemp("nodes")
    nodes = ScheduledKubelet(cluster.api, cluster.control_plane.ca_file, root, image_environment(), NODES)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def silenced(kubelet: ScheduledKubelet) -> Iterator[list[str]]:
    """The nodes a test silences (`kubelet.silence_node`, appended by the test); they report again
    afterwards, whatever happened."""
    silent: list[str] = []
    yield silent
    for node in silent:
        if node in kubelet.silent_nodes:
            kubelet.resume_node(node)
