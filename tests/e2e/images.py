"""Images the test kubelet knows besides the project's own (every other image runs this machine's venv).

A test image is a folder put first on the container's PATH, so that its programs take the place of the
venv's: the hostile image's `torchrun` (tests/support/hostile_image/) poses as a rank 0 that does not play
by the protocol, for tests/e2e/test_hostile_rank_zero.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

HOSTILE_IMAGE = "kubetune.test/hostile-rank0:1"
TEST_IMAGES = {HOSTILE_IMAGE: Path(__file__).resolve().parents[1] / "support" / "hostile_image"}


def image_environment(image: str, env: Mapping[str, str]) -> dict[str, str]:
    """`env` as a container of `image` sees it (its folder first on PATH for a test image)."""
    folder = TEST_IMAGES.get(image)
    return dict(env) if folder is None else {**env, "PATH": f"{folder}:{env.get('PATH', '')}"}
