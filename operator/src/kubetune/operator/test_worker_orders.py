"""The operator's client against a real worker supervisor (kubetune.worker) and against answers that are
not the contract's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubetune.api.outcome import TrainerResult
from kubetune.api.worker import STATE_LIMIT, WORKER_TOKEN_ENV, WorkerState
from kubetune.operator.worker_orders import SupervisorClient, observation_of
from kubetune.worker.endpoint import SupervisorEndpoint
from kubetune.worker.test_supervisor import Pod, pods, wait_until

__all__ = ["pods"]  # the fixture, shared

TOKEN = "pod-token"


def pod_at(token: str | None = TOKEN, ip: str | None = "127.0.0.1") -> dict[str, Any]:
    env = [{"name": WORKER_TOKEN_ENV, "value": token}] if token else []
    return {"status": {"podIP": ip} if ip else {}, "spec": {"containers": [{"env": env}]}}


@pytest.fixture
def served(pods: Callable[..., Pod]) -> Iterator[tuple[Pod, SupervisorClient]]:
    pod = pods({1: "wait", 2: "0"})
    endpoint = SupervisorEndpoint(TOKEN, host="127.0.0.1", connection_seconds=0.5, shutdown_poll_seconds=0.05)
    with endpoint.serving(pod.supervisor):
        yield pod, SupervisorClient(timeout=5, port=endpoint.port)


async def test_the_operator_reads_an_attempts_end_and_orders_the_next_in_the_same_pod(
    served: tuple[Pod, SupervisorClient],
) -> None:
    pod, client = served
    wait_until((pod.folder / "running-1").exists, "attempt 1 to run")
    read = await client.state(pod_at())
    assert read.state is not None and observation_of(0, read.state).state == "running"
    refused = await client.start(pod_at(), 2, "t2")
    assert refused.refused == "POST /start refused: attempt 1 is still running: stop it and wait for its end first"
    assert refused.state is not None and refused.state.attempt == 1
    stopping = await client.stop(pod_at(), 1)
    assert stopping.state is not None and stopping.state.phase == "stopping"
    wait_until(lambda: pod.supervisor.state().phase == "ended", "the ranks to end")
    ended = (await client.state(pod_at())).state
    assert ended is not None
    seen = observation_of(1, ended)
    assert (seen.index, seen.attempt, seen.state, seen.exit_code, seen.killed_by_signal) == (1, 1, "failed", 143, 15)
    assert seen.message == "attempt 1 said wait", "a message that is not a TrainerResult is kept raw"
    started = await client.start(pod_at(), 2, "t2")
    assert started.state is not None and (started.state.attempt, started.state.phase) == (2, "running")
    assert pod.ended() == 0


@pytest.mark.parametrize(
    "pod, says",
    [
        (pod_at(token="wrong"), "GET /state answered 401"),
        (pod_at(token=None), "GET /state answered 401"),
    ],
)
async def test_without_the_pods_token_nothing_is_read(
    served: tuple[Pod, SupervisorClient], pod: dict[str, Any], says: str
) -> None:
    _, client = served
    assert (await client.state(pod)).refused == says


async def test_a_pod_without_an_ip_or_a_closed_port_is_unreachable() -> None:
    client = SupervisorClient(timeout=2, port=1)
    assert (await client.state(pod_at(ip=None))).unreachable == "the pod has no IP yet"
    read = await client.state(pod_at())
    assert read.state is None and read.unreachable and not read.refused, read


class Hostile(BaseHTTPRequestHandler):
    answer: bytes = b""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)


@pytest.mark.parametrize(
    "answer, says",
    [
        (b"x" * (STATE_LIMIT + 1), f"GET /state answered with more than {STATE_LIMIT} bytes"),
        (b'{"attempt": 1, "phase": "sleeping"}', "GET /state answered 200 with a body that is not a worker state"),
        (b"not json", "GET /state answered 200 with a body that is not a worker state"),
    ],
)
async def test_an_answer_that_is_not_the_contracts_is_refused_not_raised(answer: bytes, says: str) -> None:
    handler = type("Answer", (Hostile,), {"answer": answer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        read = await SupervisorClient(timeout=5, port=server.server_address[1]).state(pod_at())
    finally:
        server.shutdown()
        server.server_close()
    assert read.state is None and read.refused.startswith(says), read


def test_an_ended_attempt_reads_as_a_terminated_container_would() -> None:
    result = TrainerResult(outcome="Failed", reason="PeerLost", message="rank 1 went away", retryable=True)
    ended = WorkerState(attempt=3, phase="ended", exit_code=7, termination_message=result.model_dump_json())
    seen = observation_of(2, ended)
    assert (seen.state, seen.exit_code, seen.result, seen.message) == ("failed", 7, result, None)
    done = observation_of(0, WorkerState(attempt=3, phase="ended", exit_code=0))
    assert (done.state, done.result) == ("succeeded", None)
    long = observation_of(0, WorkerState(attempt=1, phase="ended", exit_code=1, termination_message="x" * 500))
    assert long.message is not None and len(long.message) == 300 and long.message.endswith("...")
    stopping = observation_of(0, WorkerState(attempt=1, phase="stopping"))
    assert stopping.state == "running", "its ranks have not ended yet"
