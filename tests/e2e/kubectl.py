"""The real `kubectl` client against the emulated API server (see kubectl_compat.py for what the
emulator adds so that it works, and docs/e2e.md for what still does not)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.apiserver import write_kubeconfig

#: kubectl validates manifests against the server's OpenAPI document, which the emulator does not
#: serve; `kubetune validate` and the operator check manifests instead (test_bad_manifests.py).
NO_OPENAPI = "--validate=false"


def available() -> bool:
    return shutil.which("kubectl") is not None


class Kubectl:
    """`kubectl --kubeconfig <a kubeconfig for the emulator> ...`, output captured."""

    def __init__(self, url: str, folder: Path) -> None:
        self.kubeconfig = write_kubeconfig(folder / "kubeconfig", url)

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = ["kubectl", "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done
