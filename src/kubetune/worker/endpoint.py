"""The worker supervisor's HTTP endpoint: how the operator learns how an attempt ended and gives orders.

| request                                            | token | answer                                       |
|----------------------------------------------------|-------|----------------------------------------------|
| `GET /ready`                                       | no    | 200 while the ranks run, else 503 (the readiness probe) |
| `GET /state`                                       | yes   | the attempt, its phase, exit code, termination message |
| `POST /stop` `{"attempt": N}`                      | yes   | 202 and the state; the ranks of N are being stopped |
| `POST /start` `{"attempt": N+1, "rank0Token": ""}` | yes   | 200 and the state; 409 while N has not ended |

The readiness probe is what makes a rank's end visible without polling: the pod turns not-ready, the
operator's watch sees the pod change, and only then does it ask `GET /state`. The token
(`Authorization: Bearer`, KUBETUNE_WORKER_TOKEN in the container's environment, never passed on to the
ranks) is the pod's: whoever may read the pod's spec may give it orders, no one else on the pod network.
The paths, the bodies and their caps are kubetune.api.worker's. Bodies are tiny and capped (ORDER_LIMIT, a larger declared length is refused unread), and each read of a
connection waits at most CONNECTION_SECONDS: a peer that sends nothing is dropped then, while one that
trickles a byte at a time holds a thread for as long as it trickles (only who reaches the pod's network can;
the gang's NetworkPolicy admits the operator and the gang's own pods). An error on one connection (a peer
gone mid-answer) is one line in the log, never a traceback: the log's tail is the termination message when
the trainer wrote none.
The standard library's server is enough for four small requests; a web framework in the trainer image
would be one more thing to start on every pod.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from kubetune.api.worker import ORDER_LIMIT, READY_PATH, START_PATH, STATE_PATH, STOP_PATH, Order
from kubetune.worker.supervisor import OrderRefused, WorkerSupervisor

logger = logging.getLogger(__name__)

#: Seconds a connection may take to send its request or read its answer.
CONNECTION_SECONDS = 5.0


def _handler(supervisor: WorkerSupervisor, token: str, connection_seconds: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = connection_seconds
        server_version = "kubetune-worker"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every second would drown the pod's log

        def do_GET(self) -> None:
            if self.path == READY_PATH:
                running = supervisor.running()
                self._answer(HTTPStatus.OK if running else HTTPStatus.SERVICE_UNAVAILABLE, {"running": running})
            elif self.path == STATE_PATH and self._authorized():
                self._answer(HTTPStatus.OK, supervisor.state().to_wire())
            elif self.path != STATE_PATH:
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no {self.path} here"})

        def do_POST(self) -> None:
            if self.path not in (STOP_PATH, START_PATH):
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no {self.path} here"})
                return
            if not self._authorized():
                return
            order = self._order()
            if order is None:
                return
            try:
                if self.path == STOP_PATH:
                    self._answer(HTTPStatus.ACCEPTED, supervisor.stop(order.attempt).to_wire())
                else:
                    self._answer(HTTPStatus.OK, supervisor.start(order.attempt, order.rank0_token).to_wire())
            except OrderRefused as refused:
                self._answer(HTTPStatus.CONFLICT, {"error": str(refused), **supervisor.state().to_wire()})

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "")
            if token and hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return True
            self._answer(HTTPStatus.UNAUTHORIZED, {"error": "this endpoint needs the pod's token"})
            return False

        def _order(self) -> Order | None:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if not 0 < length <= ORDER_LIMIT:
                self._answer(HTTPStatus.BAD_REQUEST, {"error": f"send a JSON body of 1 to {ORDER_LIMIT} bytes"})
                return None
            try:
                return Order.model_validate_json(self.rfile.read(length))
            except ValidationError:
                self._answer(
                    HTTPStatus.BAD_REQUEST,
                    {"error": 'the body is {"attempt": <whole number from 1>, "rank0Token": <string, optional>}'},
                )
                return None

        def _answer(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("a connection from %s ended in error", client_address, exc_info=True)


class SupervisorEndpoint:
    """The endpoint's socket, bound at once (so a port in use is found before any rank starts), answering
    from a thread of its own while `serving`."""

    def __init__(
        self,
        token: str,
        host: str = "",
        port: int = 0,
        connection_seconds: float = CONNECTION_SECONDS,
        shutdown_poll_seconds: float = 0.5,
    ) -> None:
        self._token = token
        self._connection_seconds = connection_seconds
        self._poll_seconds = shutdown_poll_seconds
        self._server = _Server((host, port), BaseHTTPRequestHandler, bind_and_activate=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @contextmanager
    def serving(self, supervisor: WorkerSupervisor) -> Iterator[SupervisorEndpoint]:
        self._server.RequestHandlerClass = _handler(supervisor, self._token, self._connection_seconds)
        thread = threading.Thread(
            target=self._server.serve_forever, args=(self._poll_seconds,), name="worker-endpoint", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
