"""Rank 0's whole result, handed to the supervisor over HTTP because the termination message is capped.

Kubernetes keeps at most 4096 bytes of a termination message, and a result with baselines, a reference
model and fit diagnostics can be larger. So once the run has ended, rank 0 offers its whole
`TrainerResult` at `GET /result` beside `/progress` (whose snapshot then says `resultReady`) and keeps its
process alive until the operator confirms with `DELETE /result` that it has it. The wait is bounded by
`--result-handover-seconds` (an operator that is down or cut off by a NetworkPolicy never makes a job
hang: the termination message then carries what fits and says where the whole result.json is) and ends
at once on SIGTERM (the pod is being deleted: its grace period is for the checkpoint, not for this).
With the handover off (0 s, `kubetune run`, which reads result.json), nothing waits.

A copy of result.json is written beside the exported model, on the output claim, so that the whole result
outlives the pod even when the operator never got it; `claim_uri` names it as users wrote the claim.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from kubetune.api.invocation import PVC_ROOT_ENV
from kubetune.api.outcome import TrainerResult
from kubetune.trainer.config import DEFAULT_PVC_ROOT
from kubetune.trainer.state import StopRequest

log = logging.getLogger(__name__)

#: Seconds between two looks at the confirmation and the stop request while waiting.
POLL_SECONDS = 0.05


class ResultHandover:
    """The whole result waiting at GET /result until it is confirmed (thread-safe: the HTTP server's
    threads serve and confirm it, the main thread waits)."""

    def __init__(self) -> None:
        self._body: bytes | None = None
        self._taken = threading.Event()

    def offer(self, result: TrainerResult) -> None:
        self._body = result.wire().encode()

    def body(self) -> bytes | None:
        """The result's JSON while it waits; None before it is offered."""
        return self._body

    def confirm(self) -> bool:
        """The supervisor has the result; False when there is none to confirm."""
        if self._body is None:
            return False
        self._taken.set()
        return True

    @property
    def taken(self) -> bool:
        return self._taken.is_set()

    def wait(self, seconds: float, stop: StopRequest) -> bool:
        """Wait up to `seconds` for the confirmation, less on SIGTERM; whether it came."""
        deadline = time.monotonic() + seconds
        while not self._taken.is_set() and not stop.requested and time.monotonic() < deadline:
            self._taken.wait(POLL_SECONDS)
        if not self._taken.is_set():
            reason = stop.signal_name if stop.requested else f"no confirmation within {seconds:g}s"
            log.warning("the whole result was not taken from GET /result (%s); see result.json", reason)
        return self._taken.is_set()


def result_copy(result: TrainerResult, workdir: Path) -> Path:
    """Where the lasting copy of result.json goes: beside the exported model when there is one (on the
    output claim in a cluster), else the workdir's."""
    return Path(result.output_path) / "result.json" if result.output_path else workdir / "result.json"


def claim_uri(path: Path) -> str:
    """`path` as `pvc://claim/path` when it lies on a claim mounted under $KUBETUNE_PVC_ROOT (as the user
    wrote it in the manifest); otherwise the path itself."""
    root = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
    if root.is_dir():
        for claim in sorted(root.iterdir()):
            for base in (claim, claim.resolve()):
                if path.is_relative_to(base):
                    return f"pvc://{claim.name}/{path.relative_to(base)}"
    return str(path)
