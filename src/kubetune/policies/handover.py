"""Rank 0's whole result, taken from its endpoint because the termination message is capped.

The kubelet keeps at most 4096 bytes of a termination message; a result with prompting baselines, a
reference model and fit diagnostics can be larger. So in a cluster rank 0, once finished, keeps its
process alive and serves the whole `TrainerResult` at `GET /result` (its progress snapshot says
`resultReady`) until the operator confirms it has it (`DELETE /result`), or until its handover time runs
out (`--result-handover-seconds`, so a job never hangs on an operator that is down or cut off).

The operator fetches the result and presents worker 0 to `decide` as the worker it is about to be: ended,
with that whole result and the exit code the trainer exits with. The process only lingers to hand the
result over; its work is done. So the decision runs exactly the path it runs for `kubetune run`, which
reads the same whole result from result.json: `_succeeded` then `apply_result`, and both supervisors
write the same status. Nothing needs to be stored between the fetch and the pod's end, because the
trainer is confirmed only once the status written says the attempt is over (`confirmable`): an operator
that crashes in between finds rank 0 still waiting and fetches again.

When the operator never gets it, the termination message carries the whole result if it fits, else a
shortened one with `resultFile`; `apply_result` then sets ResultIncomplete, naming where the whole
result.json is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from kubetune.api.outcome import ExitReason, ProgressSnapshot, TrainerResult
from kubetune.api.status import FineTuneJobStatus
from kubetune.policies.observed import WorkerObservation, WorkerState

#: Phases in which the status still follows a running attempt: a handed-over result is not used yet.
_FOLLOWING = frozenset({"Pending", "Running"})
#: Outcomes after which the trainer exits 0.
_SUCCESSFUL = frozenset({"Succeeded", "EarlyStopped"})


def result_waiting(snapshot: ProgressSnapshot | None, attempt: int) -> bool:
    """Whether rank 0 of `attempt` says its whole result waits at GET /result (a snapshot of another
    attempt says nothing about this one)."""
    return snapshot is not None and snapshot.result_ready and snapshot.attempt in (None, attempt)


def exit_code_of(result: TrainerResult) -> int:
    """The exit code the trainer exits with after `result` (kubetune.api.outcome's table): 0 after
    success, the reason's code after a known failure, 1 after an unexpected error."""
    if result.outcome in _SUCCESSFUL:
        return 0
    reason = ExitReason.from_wire(result.reason)
    return reason.exit_code if reason is not None else 1


def handed_over(workers: Sequence[WorkerObservation], attempt: int, result: TrainerResult) -> list[WorkerObservation]:
    """`workers` with worker 0 of `attempt` as it ends: terminated, with the whole `result` (see the module
    docstring). After a successful run the other running workers of the attempt are seen as succeeded too:
    rank 0 reports success only after every rank has finished (the export waits for all), and their pods
    then only wait in torchrun's exit barrier for node 0's agent, that is for rank 0 to exit, which it does
    once confirmed: waiting for them to end first would wait forever. After a failure they are left as
    observed (worker 0's failure alone decides what follows), as are workers already terminated."""
    code = exit_code_of(result)
    ended: list[WorkerObservation] = []
    for worker in workers:
        if worker.attempt == attempt and not worker.terminated:
            if worker.index == 0:
                state: WorkerState = "succeeded" if code == 0 else "failed"
                worker = replace(worker, state=state, exit_code=code, result=result, message=None)
            elif code == 0:
                worker = replace(worker, state="succeeded", exit_code=0)
        ended.append(worker)
    return ended


def confirmable(status: FineTuneJobStatus) -> bool:
    """Whether rank 0 may be told its result was received, once `status` is written: the status no longer
    follows the running attempt (it has ended, or the gang is being removed), so the result was used or
    is no longer needed. While it still follows it (another worker has not finished yet), rank 0 keeps
    waiting and the result is fetched again at the next look."""
    return status.phase not in _FOLLOWING
