"""The worker supervisor with real processes: launchers are small Python scripts that say what they saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubetune.worker.supervisor import (
    RENDEZVOUS_ID_ENV,
    OrderRefused,
    SupervisorSettings,
    WorkerSupervisor,
    command_of,
)

#: A launcher that records its attempt's environment, writes a termination message, then ends as told by
#: the file `<folder>/plan-<attempt>` (an exit code, "wait" to run until stopped, or "ignore-term").
LAUNCHER = """
import json, os, pathlib, signal, subprocess, sys, time
folder = pathlib.Path(sys.argv[1])
attempt = os.environ["KUBETUNE_ATTEMPT"]
seen = {k: os.environ.get(k) for k in ("KUBETUNE_ATTEMPT", "PET_RDZV_ID", "KUBETUNE_RANK0_TOKEN", "KUBETUNE_WORKER_TOKEN")}
(folder / f"env-{attempt}.json").write_text(json.dumps(seen))
plan = (folder / f"plan-{attempt}").read_text().strip()
(folder / "termination-log").write_text(f"attempt {attempt} said {plan}")
if plan == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # in a session of its own, as torch's launcher starts each rank
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    (folder / "child.pid").write_text(str(child.pid))
elif plan == "wait":
    def termed(*_):
        (folder / f"termed-{attempt}").write_text("yes")
        sys.exit(143)
    signal.signal(signal.SIGTERM, termed)
elif plan == "slow-term":  # counts each SIGTERM, ends half a second after the first
    def counted(*_):
        with (folder / "sigterms").open("a") as log:
            log.write("term\\n")
        signal.setitimer(signal.ITIMER_REAL, 0.5)
    signal.signal(signal.SIGTERM, counted)
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(143))
if plan in ("wait", "ignore-term", "slow-term"):
    (folder / f"running-{attempt}").write_text("yes")
    while True:
        time.sleep(0.05)
sys.exit(int(plan))
"""


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Pod:
    """A supervisor whose `run` goes on in a thread, as the container's main thread would."""

    def __init__(self, folder: Path, plans: dict[int, str], hold_seconds: float, grace_seconds: float = 5.0):
        self.folder = folder
        for attempt, plan in plans.items():
            (folder / f"plan-{attempt}").write_text(plan)
        script = folder / "launcher.py"
        script.write_text(LAUNCHER)
        settings = SupervisorSettings(
            command=(sys.executable, str(script), str(folder)),
            first_attempt=1,
            termination_message_path=folder / "termination-log",
            hold_seconds=hold_seconds,
            grace_seconds=grace_seconds,
        )
        env = {"PATH": os.environ.get("PATH", ""), "KUBETUNE_ATTEMPT": "0"}
        self.supervisor = WorkerSupervisor(settings, env)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.exit_code = self.supervisor.run()

    def ended(self, timeout: float = 20.0) -> int:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the container should have ended"
        assert self.exit_code is not None
        return self.exit_code

    def env_of(self, attempt: int) -> dict[str, str | None]:
        path = self.folder / f"env-{attempt}.json"
        wait_until(path.exists, f"attempt {attempt}'s launcher")
        seen: dict[str, str | None] = json.loads(path.read_text())
        return seen

    def wait_phase(self, phase: str) -> None:
        wait_until(lambda: self.supervisor.state().phase == phase, f"phase {phase}")


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Callable[..., Pod]]:
    made: list[Pod] = []

    def make(plans: dict[int, str], hold_seconds: float = 60.0, grace_seconds: float = 5.0) -> Pod:
        pod = Pod(tmp_path, plans, hold_seconds, grace_seconds)
        made.append(pod)
        return pod

    yield make
    for pod in made:  # never leave a launcher behind
        pod.supervisor.terminate()
        pod.ended()


@pytest.mark.parametrize("plan, code", [("0", 0), ("3", 3), ("7", 7)])
def test_without_hold_the_container_ends_as_the_launcher_did(pods: Callable[..., Pod], plan: str, code: int) -> None:
    pod = pods({1: plan}, hold_seconds=0)
    assert pod.ended() == code
    state = pod.supervisor.state()
    assert (state.attempt, state.phase, state.exit_code, state.stopped) == (1, "ended", code, False)
    assert state.termination_message == f"attempt 1 said {plan}"


def test_a_failed_attempt_waits_for_an_order_and_the_next_attempt_runs_in_the_same_container(
    pods: Callable[..., Pod],
) -> None:
    pod = pods({1: "7", 2: "0"})
    pod.wait_phase("ended")
    assert pod.supervisor.state().exit_code == 7
    assert pod.exit_code is None, "a failure waits for the operator's order"
    state = pod.supervisor.start(2, "token-of-2")
    assert (state.attempt, state.phase) == (2, "running")
    assert pod.ended() == 0
    first, second = pod.env_of(1), pod.env_of(2)
    assert (first["KUBETUNE_ATTEMPT"], first[RENDEZVOUS_ID_ENV]) == ("1", "attempt-1")
    assert (second["KUBETUNE_ATTEMPT"], second[RENDEZVOUS_ID_ENV], second["KUBETUNE_RANK0_TOKEN"]) == (
        "2",
        "attempt-2",
        "token-of-2",
    )
    assert pod.supervisor.state().termination_message == "attempt 2 said 0"


def test_orders_out_of_turn_are_refused_and_repeated_orders_change_nothing(pods: Callable[..., Pod]) -> None:
    pod = pods({1: "wait", 2: "wait"})
    wait_until((pod.folder / "running-1").exists, "attempt 1 to run")
    with pytest.raises(OrderRefused, match="still running"):
        pod.supervisor.start(2, None)
    with pytest.raises(OrderRefused, match="never started"):
        pod.supervisor.stop(2)
    assert pod.supervisor.start(1, None).phase == "running", "starting the running attempt again is a no-op"
    pod.supervisor.stop(1)
    pod.supervisor.stop(1)  # sent twice
    pod.wait_phase("ended")
    state = pod.supervisor.state()
    assert (state.exit_code, state.stopped) == (143, True)
    assert (pod.folder / "termed-1").read_text() == "yes", "the launcher got SIGTERM, to checkpoint"
    with pytest.raises(OrderRefused, match="not newer"):
        pod.supervisor.start(1, None)
    assert pod.supervisor.start(2, None).phase == "running"
    assert pod.supervisor.stop(1).attempt == 2, "stopping an older attempt changes nothing"
    wait_until((pod.folder / "running-2").exists, "attempt 2 to run")


def test_a_launcher_that_ignores_sigterm_is_killed_with_everything_it_started(pods: Callable[..., Pod]) -> None:
    pod = pods({1: "ignore-term"}, grace_seconds=0.5)
    wait_until((pod.folder / "running-1").exists, "attempt 1 to run")
    child = int((pod.folder / "child.pid").read_text())
    pod.supervisor.stop(1)
    pod.wait_phase("ended")
    assert pod.supervisor.state().exit_code == 137
    wait_until(lambda: not _alive(child), "the launcher's child to be killed")


def test_sigterm_to_the_pod_stops_the_ranks_and_ends_the_container_with_their_code(pods: Callable[..., Pod]) -> None:
    pod = pods({1: "wait"})
    wait_until((pod.folder / "running-1").exists, "attempt 1 to run")
    pod.supervisor.terminate()
    assert pod.ended() == 143
    assert (pod.folder / "termed-1").exists()
    with pytest.raises(OrderRefused, match="stopping"):
        pod.supervisor.start(2, None)


def test_the_pods_sigterm_and_an_order_to_stop_reach_the_launcher_once(pods: Callable[..., Pod]) -> None:
    pod = pods({1: "slow-term"})
    wait_until((pod.folder / "running-1").exists, "attempt 1 to run")
    pod.supervisor.terminate()
    wait_until(lambda: pod.supervisor.state().phase == "stopping", "the stop under way")
    pod.supervisor.stop(1)  # the operator's order, while the pod's own stop is under way
    assert pod.ended() == 143
    assert (pod.folder / "sigterms").read_text() == "term\n", "a second SIGTERM makes torchrun abandon its ranks"


def test_a_pod_stopped_before_its_ranks_start_starts_none(tmp_path: Path) -> None:
    pod_folder = tmp_path / "pod"
    pod_folder.mkdir()
    settings = SupervisorSettings(
        command=(sys.executable, "-c", f"open({str(pod_folder / 'started')!r}, 'w')"),
        first_attempt=1,
        termination_message_path=pod_folder / "termination-log",
        hold_seconds=0,
        grace_seconds=1,
    )
    supervisor = WorkerSupervisor(settings, {"PATH": os.environ.get("PATH", "")})
    supervisor.terminate()  # the SIGTERM that arrives as the container starts
    assert supervisor.run() == 143
    assert not (pod_folder / "started").exists()


def test_a_failed_attempt_that_gets_no_order_ends_the_container_with_its_failure(pods: Callable[..., Pod]) -> None:
    pod = pods({1: "9"}, hold_seconds=0.3)
    assert pod.ended() == 9
    assert (pod.folder / "termination-log").read_text() == "attempt 1 said 9", "left for the kubelet"


def test_ended_orphans_are_reaped() -> None:
    # In a process of its own: reaping in pytest's would take other children's statuses.
    script = (
        "import subprocess, sys, time\n"
        "from kubetune.worker.ranks import reap_orphans\n"
        "children = [subprocess.Popen([sys.executable, '-c', 'pass']) for _ in range(3)]\n"
        "for child in children:\n"
        "    child.returncode = -1  # Popen will not reap them: as if handed over by an ended launcher\n"
        "deadline = time.monotonic() + 30\n"
        "reaped = 0\n"
        "while reaped < 3 and time.monotonic() < deadline:\n"
        "    reaped += reap_orphans()\n"
        "print(reaped, reap_orphans())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["3", "0"], done.stderr


def test_the_launcher_command_comes_after_the_separator() -> None:
    assert command_of(["--port", "1", "--", "torchrun", "-m", "x"]) == ("torchrun", "-m", "x")
    for argv in (["--port", "1"], ["--port", "1", "--"]):
        with pytest.raises(ValueError, match="after `--`"):
            command_of(argv)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent, which was killed too) is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
