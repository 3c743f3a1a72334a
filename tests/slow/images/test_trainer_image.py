"""The CPU trainer image `make images` built (issue 20), read from its OCI archive as a stream (it is
several GB: never held in memory as the operator image's test holds its layers): it runs as the operator
builds worker pods (user, entry point, ports), carries DeepSpeed's CPU comm op compiled at build time (no
pod compiles it), and no build secret stayed in any layer. The real node's training scenarios
(tests/e2e/realnode/test_training.py) run it as pods.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from kubetune.operator.builders import METRICS_PORT, RENDEZVOUS_PORT, TRAINER_UID
from tests.slow.images.test_images import PIP_CONF_LINE, SECRET_PATHS, archive

pytestmark = pytest.mark.timeout(300)

#: Files up to this size are searched for the pip configuration passed as a secret (a leaked copy would
#: be one such file; the image's large files are libraries).
SEARCHED_BYTES = 1 << 20


@dataclass(frozen=True)
class Scanned:
    name: str
    config: dict[str, Any]
    files: frozenset[str]
    folder_owners: dict[str, int]
    """Each folder's owner (uid), as the last layer that has it says."""
    holding_secret: tuple[str, ...]
    """Files whose content has the pip configuration's line."""


@cache
def scan(target: str) -> Scanned:
    files: set[str] = set()
    owners: dict[str, int] = {}
    holding: list[str] = []
    with archive(target) as opened:
        for layer in opened.manifest["layers"]:
            with tarfile.open(fileobj=opened.blob(layer["digest"]), mode="r|*") as inner:
                for member in inner:
                    name = member.name.removeprefix("./")
                    files.add(name)
                    if member.isdir():
                        owners[name.rstrip("/")] = member.uid
                    if member.isfile() and member.size <= SEARCHED_BYTES:
                        content = inner.extractfile(member)
                        if content is not None and PIP_CONF_LINE in content.read():
                            holding.append(name)
    return Scanned(opened.name, opened.config["config"], frozenset(files), owners, tuple(holding))


def test_the_trainer_image_runs_as_the_operator_builds_worker_pods() -> None:
    built = scan("trainer")
    assert built.name == "ghcr.io/kubetune/trainer:0.1.0"  # the chart's default trainer image
    assert built.config["User"] == f"{TRAINER_UID}:{TRAINER_UID}"
    assert built.config["Entrypoint"] == ["kubetune"]
    assert set(built.config["ExposedPorts"]) == {f"{RENDEZVOUS_PORT}/tcp", f"{METRICS_PORT}/tcp"}
    assert "opt/kubetune/bin/torchrun" in built.files
    # the pod's command: `python -m kubetune.worker -- torchrun ...` (operator builders._command)
    assert "opt/kubetune/bin/python" in built.files
    assert any(f.endswith("site-packages/kubetune/worker/__main__.py") for f in built.files)


def test_the_trainer_image_carries_deepspeeds_cpu_comm_op_compiled() -> None:
    built = scan("trainer")
    env = dict(line.split("=", 1) for line in built.config["Env"])
    folder = env["TORCH_EXTENSIONS_DIR"].strip("/")
    assert [f for f in built.files if f.startswith(f"{folder}/") and f.endswith(".so")], sorted(built.files)[:20]
    # the trainer's user takes a lock file there when it loads the op (and compiles there on a CUDA image)
    assert built.folder_owners[folder] == TRAINER_UID


def test_no_build_secret_stays_in_the_trainer_image() -> None:
    built = scan("trainer")
    assert not [path for path in SECRET_PATHS if path in built.files]
    assert built.holding_secret == ()
