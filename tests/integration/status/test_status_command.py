"""`kubetune status` as a user runs it (a process, a kubeconfig) against the emulated API server.

- a running job: the report (phase, progress and ETA, losses, restarts with their reason, conditions,
  events), exit 0;
- a job that does not exist: exit 1 and a sentence that says what to check, no traceback;
- `-w`: follows the job as its status moves, charts the losses it saw, stops when it has finished;
- `-w` and Ctrl-C: exit 130, no traceback;
- `--prometheus`: the loss chart from a Prometheus query API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest

from tests.support.apiserver import JOBS, Cluster, write_kubeconfig
from tests.support.builders import a_job
from tests.support.ports import free_port
from tests.support.statuses import finished_status, job_event, restart_event, running_status

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(start_operator=False) as cluster:
        yield cluster


async def create(cluster: Cluster, name: str, status: dict[str, Any]) -> dict[str, Any]:
    job = await cluster.create_job(a_job(name).build())
    await set_status(cluster, name, status)
    return job


async def set_status(cluster: Cluster, name: str, status: dict[str, Any]) -> None:
    await cluster.request("PATCH", cluster._path(JOBS, name, "status"), {"status": status})


async def post_event(cluster: Cluster, event: dict[str, Any]) -> None:
    await cluster.request("POST", cluster._path("v1/events"), event)


def _as_a_shell_starts_it() -> None:
    """The child's signals as a terminal's shell leaves them: none blocked, Ctrl-C's default action. A mask
    or an ignored SIGINT is inherited across exec, and something earlier in a long test process may have
    left either behind (a full `make test` saw Ctrl-C go unanswered here twice; the test alone never did)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def start(tmp_path: Path, cluster: Cluster, *args: str) -> asyncio.subprocess.Process:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "200"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubetune.cli", "status", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=_as_a_shell_starts_it,
    )  # fmt: skip


def _signal_state(pid: int) -> str:
    """The blocked, ignored and caught signal masks of a process (for a failure message)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as error:
        return str(error)
    return ", ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt", "State")))


async def kubetune_status(tmp_path: Path, cluster: Cluster, *args: str) -> tuple[int, str, str]:
    process = await start(tmp_path, cluster, *args)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_running_job_shows_the_report(tmp_path: Path, cluster: Cluster) -> None:
    job = await create(cluster, "demo", running_status())
    await post_event(cluster, job_event(job, "Normal", "GangCreated", "attempt 1: 2 worker(s) created", 600))
    await post_event(cluster, restart_event(job, 300))
    await post_event(cluster, job_event({"metadata": {"name": "other"}}, "Warning", "WorkerFailed", "not ours"))
    code, out, err = await kubetune_status(tmp_path, cluster, "demo")
    assert (code, err) == (0, ""), err
    for words in (
        "FineTuneJob default/demo: Running",
        "Phase:          Running (WorkersRunning): attempt 2: 2 worker(s) training",
        "step 12 of 40 (30%), epoch 0.60, ETA 2m10s",
        "train 1.25, eval 1.1, best eval 1.05 at step 10",
        "Restarts:       1 (attempt 2); OutOfMemory (5m ago)",
        "| Running    | True   | WorkersRunning |",
        "| Warning | OutOfMemory | worker 1 of attempt 1 ran out of memory",
        "`--prometheus URL` charts their history",
    ):
        assert words in out, out
    assert "not ours" not in out


async def test_a_missing_job_exits_1_with_what_to_check(tmp_path: Path, cluster: Cluster) -> None:
    code, out, err = await kubetune_status(tmp_path, cluster, "absent")
    assert (code, out) == (1, "")
    assert "FineTuneJob absent not found in namespace default (the current context's)" in err, err
    assert "-n NAMESPACE" in err and "kubectl get ftj -A" in err and "Traceback" not in err


async def test_watch_follows_the_job_until_it_finishes(tmp_path: Path, cluster: Cluster) -> None:
    await create(cluster, "followed", running_status(step=12, train_loss=2.0))
    process = await start(tmp_path, cluster, "followed", "-w", "--interval", "0.2")
    assert process.stdout is not None
    seen = b""
    for step, loss in ((20, 1.5), (30, 1.0)):
        await asyncio.sleep(1.5)  # the process starts (about 1 s), then reads every 0.2 s
        await set_status(cluster, "followed", running_status(step=step, train_loss=loss))
    await asyncio.sleep(1.0)
    await set_status(cluster, "followed", finished_status())
    out, err = await asyncio.wait_for(process.communicate(), 30)
    seen += out
    text = seen.decode()
    assert process.returncode == 0, err.decode()
    assert "following until the job finishes" in text
    assert "Running | step 30/40 (75%) | train loss 1" in text, text
    assert "Outcome:" in text and "Succeeded (TrainingCompleted): trained 40 steps" in text
    assert "Loss history (seen while following, one point per status)" in text
    assert "Verdict: fine-tuned (135 M) reaches 1.00 exact match" in text
    assert "| fine-tuned      | 100.0%" in text, text


async def test_ctrl_c_while_watching_exits_130_cleanly(tmp_path: Path, cluster: Cluster) -> None:
    await create(cluster, "watched", running_status())
    process = await start(tmp_path, cluster, "watched", "-w", "--interval", "0.2")
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readuntil(b"following until the job finishes"), 30)
    assert b"FineTuneJob default/watched: Running" in first
    process.send_signal(signal.SIGINT)
    try:
        _, err = await asyncio.wait_for(process.communicate(), 90)  # generous: a loaded machine, not a speed goal
    except TimeoutError:
        state = _signal_state(process.pid)
        process.kill()  # never left running: its pipes would fail a later test as unraisable warnings
        await process.communicate()
        raise AssertionError(f"kubetune status did not end 90 s after SIGINT ({state})") from None
    assert process.returncode == 130, err.decode()
    assert b"Traceback" not in err and b"stopped following FineTuneJob watched" in err


async def test_the_loss_chart_comes_from_prometheus(tmp_path: Path, cluster: Cluster) -> None:
    await create(cluster, "charted", running_status())
    queries: list[str] = []

    async def query_range(request: aiohttp.web.Request) -> aiohttp.web.Response:
        queries.append(request.query["query"])
        start = float(request.query["start"])
        values = [[start + 60 * i, str(3.0 - 0.1 * i)] for i in range(10)]
        return aiohttp.web.json_response(
            {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}}
        )

    app = aiohttp.web.Application()
    app.router.add_get("/api/v1/query_range", query_range)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, out, err = await kubetune_status(tmp_path, cluster, "charted", "--prometheus", f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
    assert code == 0, err
    assert queries == [
        'max(kubetune_train_loss{namespace="default",finetunejob="charted"})',
        'max(kubetune_eval_loss{namespace="default",finetunejob="charted"})',
    ]
    assert f"Loss history (Prometheus at http://127.0.0.1:{port})" in out, out
    assert "train loss  █▇▆▆▅▄▃▃▂▁  3 -> 2.1, lowest 2.1 (10 points, over 9m00s)" in out, out


async def test_an_unreachable_prometheus_is_a_note_not_a_failure(tmp_path: Path, cluster: Cluster) -> None:
    await create(cluster, "uncharted", running_status())
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = await kubetune_status(tmp_path, cluster, "uncharted", "--prometheus", url)
    assert (code, err) == (0, ""), err
    assert f"No loss history from Prometheus at {url}: not reachable (" in out, out
