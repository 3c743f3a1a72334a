"""The images `make images` built (issue 20), read from their OCI archives: what the Dockerfile says is
what was built, the operator image is the small one, and no build secret stayed in any layer.

`make test` builds them first (BuildKit from its Go module, a debootstrap base; tests/node/build-images.sh),
so a missing archive is a failure naming the command, not a skip. Nothing here runs a container; the real
node (next in issue 20) will.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from tests.support.chart import ROOT, one, render

pytestmark = pytest.mark.timeout(120)

IMAGES = ROOT / ".cache" / "images"
#: What the Dockerfile mounts as build secrets: never in a layer.
SECRET_PATHS = ("etc/pip.conf", "run/secrets/pip-ca", "run/secrets/pip-conf")


@dataclass(frozen=True)
class Image:
    name: str
    config: dict[str, Any]
    files: frozenset[str]
    layer_bytes: int


@cache
def image(target: str) -> Image:
    archive = IMAGES / f"{target}.tar"
    if not archive.exists():
        pytest.fail(f"{archive} is missing: `make images` builds it (make test runs it first)")
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> bytes:
            member = outer.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None, digest
            return member.read()

        index = json.loads(blob_of(outer, "index.json"))
        entry = index["manifests"][0]
        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        files: set[str] = set()
        size = 0
        for layer in manifest["layers"]:
            data = blob(layer["digest"])
            size += len(data)
            raw = gzip.decompress(data) if layer["mediaType"].endswith("gzip") else data
            with tarfile.open(fileobj=io.BytesIO(raw)) as inner:
                files.update(name.removeprefix("./") for name in inner.getnames())
    return Image(entry["annotations"]["io.containerd.image.name"], config["config"], frozenset(files), size)


def blob_of(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.extractfile(name)
    assert member is not None, name
    return member.read()


def test_the_operator_image_is_the_one_the_chart_runs_as_the_dockerfile_says() -> None:
    built = image("operator")
    deployment = one(render(), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == built.name == "ghcr.io/kubetune/operator:0.1.0"
    security = deployment["spec"]["template"]["spec"].get("securityContext", {}) | container.get("securityContext", {})
    assert built.config["User"] == f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"
    assert built.config["Entrypoint"] == ["kubetune"] and built.config["Cmd"] == ["operator"]
    assert set(built.config["ExposedPorts"]) == {"8080/tcp", "8081/tcp"}


def test_the_operator_image_has_kubetune_and_no_torch() -> None:
    files = image("operator").files
    assert "opt/kubetune/bin/kubetune" in files
    site = {f for f in files if "/site-packages/" in f}
    assert any("/site-packages/kubetune/operator/" in f for f in site)
    assert any("/site-packages/kopf/" in f for f in site)
    assert not any("/site-packages/torch/" in f or "/site-packages/kubetune/trainer/" in f for f in site)


@pytest.mark.parametrize("path", SECRET_PATHS)
def test_no_build_secret_stays_in_the_image(path: str) -> None:
    assert path not in image("operator").files
