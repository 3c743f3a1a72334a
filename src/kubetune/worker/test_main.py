"""`python -m kubetune.worker` as the container runs it: its exit codes and its words for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.invocation import EXIT_BAD_INPUT


def worker(
    args: list[str], attempt: str | None, tmp_path: Path, port: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_ATTEMPT"}
    if attempt is not None:
        env["KUBETUNE_ATTEMPT"] = attempt
    flags = [*(port or []), "--grace-seconds", "1", "--termination-message-path", str(tmp_path / "message")]
    return subprocess.run(
        [sys.executable, "-m", "kubetune.worker", *flags, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


LAUNCHER = ["--", sys.executable, "-c", "import os, sys; sys.exit(int(os.environ['KUBETUNE_ATTEMPT']) + 3)"]


@pytest.mark.parametrize("port", [None, ["--port", "0"]], ids=["as-worker-pods-run-it", "with-an-endpoint"])
def test_the_container_ends_with_the_launchers_code_and_says_nothing_of_its_own(
    tmp_path: Path, port: list[str] | None
) -> None:
    done = worker(LAUNCHER, "2", tmp_path, port)
    assert (done.returncode, done.stderr) == (5, ""), "the log's tail stays the launcher's"


def test_with_a_hold_each_attempt_gets_a_line_in_the_log(tmp_path: Path) -> None:
    done = worker(["--hold-seconds", "0.1", *LAUNCHER], "2", tmp_path, ["--port", "0"])
    assert done.returncode == 5, done.stderr
    assert "attempt 2: ranks ended with exit code 5" in done.stderr


@pytest.mark.parametrize(
    "args, attempt, says",
    [
        (["torchrun"], "1", "give the launcher's command after `--`"),
        (["--"], "1", "the launcher's command after `--` is empty"),
        (["--", "true"], None, "KUBETUNE_ATTEMPT must hold the pod's attempt (1, 2, ...), not ''"),
        (["--", "true"], "0", "not '0'"),
        (["--hold", "x", "--", "true"], "1", "argument --hold-seconds: invalid float value: 'x'"),
    ],
)
def test_bad_input_is_named_and_exits_2(tmp_path: Path, args: list[str], attempt: str | None, says: str) -> None:
    done = worker(args, attempt, tmp_path)
    assert done.returncode == EXIT_BAD_INPUT == 2
    assert says in done.stderr and "Traceback" not in done.stderr
