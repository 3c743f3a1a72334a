"""The contract between a worker pod's supervisor (kubetune.worker) and the operator, written once.

The supervisor serves it and the operator reads and orders through it (operator worker_orders.py): the
port, the token's variable, the paths, and the two bodies — the state of the pod's current attempt, and
an order. Both sides validate with these models, so a renamed field fails a test on both sides at once.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune.api.outcome import TERMINATION_MESSAGE_LIMIT

#: The supervisor's TCP port in the worker pod (beside the rendezvous and metrics ports).
SUPERVISOR_PORT: Final = 9401
#: The pod's token for the supervisor's endpoint (`Authorization: Bearer`); never passed on to the ranks.
WORKER_TOKEN_ENV: Final = "KUBETUNE_WORKER_TOKEN"
#: Largest order body, in bytes (an order is about 100 bytes).
ORDER_LIMIT: Final = 1024
#: Largest state body, in bytes: the termination message (at most 4096 bytes, escaped in JSON up to six
#: times as long) and a few fields.
STATE_LIMIT: Final = 6 * TERMINATION_MESSAGE_LIMIT + 1024

READY_PATH: Final = "/ready"
STATE_PATH: Final = "/state"
STOP_PATH: Final = "/stop"
START_PATH: Final = "/start"

AttemptPhase = Literal["running", "stopping", "ended"]


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class WorkerState(_Wire):
    """What a supervisor says of its pod's current attempt (`GET /state`)."""

    attempt: int = Field(ge=1)
    phase: AttemptPhase
    exit_code: int | None = Field(default=None, ge=0, le=255)
    """The launcher's exit code once ended (128 + N for signal N); None while it runs."""
    stopped: bool = False
    """It ended because it was told to stop, or the pod was being stopped."""
    termination_message: str | None = Field(default=None, max_length=TERMINATION_MESSAGE_LIMIT)
    """What the trainer left for the kubelet, as the kubelet reads it (at most 4096 bytes)."""


class Refusal(WorkerState):
    """An order the supervisor cannot carry out now (409): why, beside its state."""

    error: str = Field(max_length=1024)


class Order(_Wire):
    """`POST /stop` and `POST /start`: the attempt it is about, and for a start, its rank 0 token."""

    attempt: int = Field(ge=1, strict=True)
    rank0_token: str | None = Field(default=None, max_length=256)
