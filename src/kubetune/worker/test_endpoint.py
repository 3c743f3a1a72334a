"""The supervisor's endpoint over real HTTP: the token, the caps, and orders end to end."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kubetune.api.worker import ORDER_LIMIT
from kubetune.worker.endpoint import SupervisorEndpoint
from kubetune.worker.test_supervisor import Pod, pods, wait_until

__all__ = ["pods"]  # the fixture, shared

TOKEN = "pod-token"


def request(
    port: int, method: str, path: str, body: object = None, token: str | None = TOKEN, length: str | None = None
) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if length is not None:
        headers["Content-Length"] = length
    connection.request(method, path, body=data if length is None else b"", headers=headers)
    answer = connection.getresponse()
    status, text = answer.status, answer.read()
    connection.close()
    return status, json.loads(text)


@pytest.fixture
def served(pods: Callable[..., Pod]) -> Iterator[tuple[Pod, int]]:
    pod = pods({1: "wait", 2: "0"})
    endpoint = SupervisorEndpoint(TOKEN, host="127.0.0.1", connection_seconds=0.5, shutdown_poll_seconds=0.05)
    with endpoint.serving(pod.supervisor):
        yield pod, endpoint.port


def test_orders_over_http_restart_the_ranks_in_the_same_pod(served: tuple[Pod, int]) -> None:
    pod, port = served
    wait_until((pod.folder / "running-1").exists, "attempt 1 to run")
    assert request(port, "GET", "/ready", token=None)[0] == 200
    status, state = request(port, "POST", "/start", {"attempt": 2})
    assert (status, state["error"]) == (409, "attempt 1 is still running: stop it and wait for its end first")
    assert request(port, "POST", "/stop", {"attempt": 1})[0] == 202
    assert request(port, "GET", "/ready", token=None)[0] == 503, "not ready from the order on"
    wait_until(lambda: request(port, "GET", "/state")[1]["phase"] == "ended", "the ranks to end")
    status, state = request(port, "GET", "/state")
    assert (status, state["attempt"], state["phase"], state["exitCode"], state["stopped"]) == (
        200,
        1,
        "ended",
        143,
        True,
    )
    assert state["terminationMessage"] == "attempt 1 said wait"
    status, state = request(port, "POST", "/start", {"attempt": 2, "rank0Token": "t2"})
    assert (status, state["attempt"]) == (200, 2)
    assert pod.ended() == 0
    assert pod.env_of(2)["KUBETUNE_RANK0_TOKEN"] == "t2"


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_state_and_orders_need_the_pods_token(served: tuple[Pod, int], token: str | None) -> None:
    pod, port = served
    for method, path, body in (("GET", "/state", None), ("POST", "/stop", {"attempt": 1})):
        status, answer = request(port, method, path, body, token=token)
        assert (status, answer) == (401, {"error": "this endpoint needs the pod's token"})
    assert pod.supervisor.state().phase == "running"


@pytest.mark.parametrize(
    "body, length",
    [
        ({"attempt": "2"}, None),
        ({"attempt": 0}, None),
        ({"attempt": True}, None),
        ({"attempt": 2, "rank0Token": 5}, None),
        ([2], None),
        ({}, None),
        (None, "0"),
        (None, str(ORDER_LIMIT + 1)),
        (None, "many"),
    ],
)
def test_a_malformed_or_oversized_order_is_refused_unread(
    served: tuple[Pod, int], body: object, length: str | None
) -> None:
    pod, port = served
    status, answer = request(port, "POST", "/stop", body, length=length)
    assert status == 400 and "body" in str(answer["error"])
    assert pod.supervisor.state().phase == "running"


def test_a_peer_that_sends_nothing_holds_one_connection_briefly(served: tuple[Pod, int]) -> None:
    _pod, port = served
    with socket.create_connection(("127.0.0.1", port)) as silent:
        silent.sendall(b"POST /stop HTTP/1.1\r\nContent-Length: 50\r\n")
        assert request(port, "GET", "/ready", token=None)[0] == 200, "others are answered meanwhile"
        silent.settimeout(30)
        assert silent.recv(1024) == b"", "the server closes the connection after its time limit"


def test_the_endpoint_binds_before_any_rank_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            SupervisorEndpoint(TOKEN, host="127.0.0.1", port=taken.getsockname()[1])
