"""The images `make images` built (issue 20), read from their OCI archives: what the Dockerfile says is
what was built, the operator image is the small one, and no build secret stayed in any layer.

`make test` builds them first (BuildKit from its Go module, a debootstrap base; tests/node/build-images.sh),
so a missing archive is a failure naming the command, not a skip. The operator image is also run, with
runc as BuildKit runs build steps (a network namespace with only loopback, no capabilities, the image's
user): its `kubetune crd` prints the CRD checked in, so the code in the image is this tree's and its
dependencies import. The real node (next in issue 20) runs the images as pods.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.chart import ROOT, one, render

pytestmark = pytest.mark.timeout(120)

IMAGES = ROOT / ".cache" / "images"
#: Where the Dockerfile mounts the build secrets: never in a layer.
SECRET_PATHS = ("etc/pip.conf", "run/secrets/pip-ca")
#: A line of the pip configuration make images passes as a secret (tests/node/build-images.sh).
PIP_CONF_LINE = b"cert = /run/secrets/pip-ca"


@dataclass(frozen=True)
class Image:
    name: str
    config: dict[str, Any]
    files: frozenset[str]
    layers: tuple[bytes, ...]
    """Each layer's tar, uncompressed, bottom first."""


@dataclass(frozen=True)
class Archive:
    """An OCI archive `make images` wrote, open: its only image's index entry, manifest and config."""

    tar: tarfile.TarFile
    entry: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.entry["annotations"]["io.containerd.image.name"])

    def blob(self, digest: str) -> IO[bytes]:
        return blob(self.tar, digest)


def blob(tar: tarfile.TarFile, digest: str) -> IO[bytes]:
    member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
    assert member is not None, digest
    return member


@contextmanager
def archive(target: str) -> Iterator[Archive]:
    path = IMAGES / f"{target}.tar"
    if not path.exists():
        pytest.fail(f"{path} is missing: `make images` builds it (make test runs it first)")
    with tarfile.open(path) as tar:
        index = tar.extractfile("index.json")
        assert index is not None, path
        entry = json.load(index)["manifests"][0]
        manifest = json.load(blob(tar, entry["digest"]))
        yield Archive(tar, entry, manifest, json.load(blob(tar, manifest["config"]["digest"])))


@cache
def image(target: str) -> Image:
    with archive(target) as opened:
        files: set[str] = set()
        layers = []
        for layer in opened.manifest["layers"]:
            data = opened.blob(layer["digest"]).read()
            raw = gzip.decompress(data) if layer["mediaType"].endswith("gzip") else data
            layers.append(raw)
            with tarfile.open(fileobj=io.BytesIO(raw)) as inner:
                files.update(name.removeprefix("./") for name in inner.getnames())
    return Image(opened.name, opened.config["config"], frozenset(files), tuple(layers))


def unpack(built: Image, rootfs: Path) -> None:
    """The image's filesystem: its layers applied in order (an OCI whiteout `.wh.NAME` removes NAME)."""
    rootfs.mkdir(parents=True)
    for raw in built.layers:
        with tarfile.open(fileobj=io.BytesIO(raw)) as layer:
            members = []
            for member in layer.getmembers():
                path = Path(member.name)
                if path.name.startswith(".wh."):
                    gone = rootfs / path.parent / path.name.removeprefix(".wh.")
                    if gone.is_dir() and not gone.is_symlink():
                        shutil.rmtree(gone)
                    else:
                        gone.unlink(missing_ok=True)
                else:
                    members.append(member)
            layer.extractall(rootfs, members=members, filter="tar")


def run_in(
    built: Image, rootfs: Path, bundle: Path, args: list[str], entrypoint: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`args` after the image's entry point (or `entrypoint`) in a container of the image (runc; its own
    network namespace with only loopback; no capabilities; the image's user, environment, working
    directory)."""
    runc = shutil.which("runc")
    if runc is None:
        pytest.fail("runc is missing: install it (apt-get install runc); make images needs it too")
    bundle.mkdir(parents=True, exist_ok=True)
    subprocess.run([runc, "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    uid, gid = (int(part) for part in built.config["User"].split(":"))
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"] |= {
        "terminal": False,
        "args": [*(built.config.get("Entrypoint", []) if entrypoint is None else entrypoint), *args],
        "env": built.config.get("Env", []),
        "cwd": built.config.get("WorkingDir") or "/",
        "user": {"uid": uid, "gid": gid},
        "capabilities": {},
    }
    assert {"type": "network"} in spec["linux"]["namespaces"]  # only loopback inside: nothing can leave
    (bundle / "config.json").write_text(json.dumps(spec))
    name = f"kubetune-image-test-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run(
            [runc, "run", "--bundle", str(bundle), name], capture_output=True, text=True, timeout=90, check=False
        )
    finally:
        subprocess.run([runc, "delete", "--force", name], capture_output=True, check=False)


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


def test_no_layer_holds_the_pip_configuration_passed_as_a_secret() -> None:
    assert not any(PIP_CONF_LINE in layer for layer in image("operator").layers)


@pytest.fixture(scope="module")
def operator_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rootfs = tmp_path_factory.mktemp("operator-image") / "rootfs"
    unpack(image("operator"), rootfs)
    return rootfs


def test_the_operator_image_runs_this_trees_code(operator_rootfs: Path, tmp_path: Path) -> None:
    finished = run_in(image("operator"), operator_rootfs, tmp_path / "bundle", ["crd"])
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout == (ROOT / "crds" / "finetunejob.yaml").read_text()
