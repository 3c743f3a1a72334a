"""The operator's side of the worker supervisor's endpoint: read how a pod's attempt went, give orders.

A worker pod runs kubetune.worker as its command. When its ranks end but its pod stays (a restart in
place, issue 29), the kubelet reports nothing: the container still runs. What happened is read here,
from `GET /state` on the pod's supervisor port, and turned into the same `WorkerObservation` a terminated
container gives (`observation_of`), so the policies decide on it exactly as on a pod that ended. Orders
(`POST /stop`, `POST /start` of the next attempt) go the same way.

As with rank 0's endpoints (kubetune.operator.progress), the pod runs an image its job's author chose:
each request is bounded in time, each answer in bytes (kubetune.api.worker.STATE_LIMIT), an answer that is
not the contract's is refused and reported, never raised; the pod's token from its own spec
(KUBETUNE_WORKER_TOKEN) goes with every request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import ValidationError

from kubetune.api.worker import (
    START_PATH,
    STATE_LIMIT,
    STATE_PATH,
    STOP_PATH,
    SUPERVISOR_PORT,
    WORKER_TOKEN_ENV,
    Order,
    Refusal,
    WorkerState,
)
from kubetune.operator.observe import truncate
from kubetune.operator.progress import BodyTooLarge, pod_env_value, pod_url, read_capped
from kubetune.policies.observed import WorkerObservation, parse_termination_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorRead:
    """What a pod's supervisor answered: its state, or why there is none."""

    state: WorkerState | None = None
    unreachable: str = ""
    """The request failed at the connection (refused, reset, timed out): e.g. `connection refused`."""
    refused: str = ""
    """It answered, but not as the contract says: e.g. `GET /state answered 401`."""


def worker_token(pod: Mapping[str, Any]) -> str | None:
    """The pod's supervisor token, from its own spec (the operator put it there when it created the pod)."""
    return pod_env_value(pod, WORKER_TOKEN_ENV)


class SupervisorClient:
    """Worker pods' supervisors at http://<pod IP>:<port>, each request bounded by `timeout` seconds."""

    def __init__(self, timeout: float, port: int = SUPERVISOR_PORT) -> None:
        self.port = port
        self.seconds = timeout
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def state(self, pod: Mapping[str, Any]) -> SupervisorRead:
        return await self._call(pod, "GET", STATE_PATH, None)

    async def stop(self, pod: Mapping[str, Any], attempt: int) -> SupervisorRead:
        """Order the pod's ranks of `attempt` to stop; the answer is the state as the order found it."""
        return await self._call(pod, "POST", STOP_PATH, Order(attempt=attempt))

    async def start(self, pod: Mapping[str, Any], attempt: int, rank0_token: str | None) -> SupervisorRead:
        """Order the pod to start `attempt`'s ranks; refused (409) while its previous attempt has not ended."""
        return await self._call(pod, "POST", START_PATH, Order(attempt=attempt, rank0_token=rank0_token))

    async def _call(self, pod: Mapping[str, Any], method: str, path: str, order: Order | None) -> SupervisorRead:
        url = pod_url(pod, self.port, path)
        if url is None:
            return SupervisorRead(unreachable="the pod has no IP yet")
        token = worker_token(pod)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = order.model_dump_json(by_alias=True, exclude_none=True).encode() if order else None
        if body is not None:
            headers["Content-Type"] = "application/json"
        # No keep-alive and no decompression, as for rank 0 (kubetune.operator.progress): orders are rare.
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False, connector=connector) as session,
                session.request(method, url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                code, text = response.status, await read_capped(response, STATE_LIMIT)
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as error:
            reason = f"timed out after {self.seconds:g}s" if isinstance(error, TimeoutError) else str(error)
            return SupervisorRead(unreachable=reason or type(error).__name__)
        except (aiohttp.ClientError, BodyTooLarge) as error:
            return SupervisorRead(refused=f"{method} {path} {error}")
        if code not in (200, 202, 409):
            return SupervisorRead(refused=f"{method} {path} answered {code}")
        try:
            if code == 409:  # the refusal's words beside the state's fields
                refusal = Refusal.model_validate_json(text)
                return SupervisorRead(
                    state=WorkerState.model_validate(refusal.model_dump(exclude={"error"})),
                    refused=f"{method} {path} refused: {refusal.error}",
                )
            state = WorkerState.model_validate_json(text)
        except ValidationError:
            logger.info("not a worker state from %s", url)
            return SupervisorRead(refused=f"{method} {path} answered {code} with a body that is not a worker state")
        return SupervisorRead(state=state)


def observation_of(index: int, state: WorkerState) -> WorkerObservation:
    """The policies' view of a worker whose pod runs on: running while its ranks do, else ended as they
    ended — the same fields a terminated container gives (kubetune.operator.observe). An attempt the
    operator itself stopped (`state.stopped`) reads as failed by SIGTERM, as a deleted pod's container
    does: the reconcile that ordered the stop already knows why."""
    if state.phase != "ended" or state.exit_code is None:
        return WorkerObservation(index, state.attempt, "running")
    result = parse_termination_message(state.termination_message)
    raw = truncate(state.termination_message) if result is None else None
    return WorkerObservation(
        index,
        state.attempt,
        "succeeded" if state.exit_code == 0 else "failed",
        exit_code=state.exit_code,
        result=result,
        message=raw.strip() if raw else None,
    )
