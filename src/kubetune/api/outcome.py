"""The contract between a trainer process and whatever supervises it (the operator or the local runner).

A trainer ends with an exit code from `ExitReason` and, on rank 0, a `TrainerResult` written to
`result.json` and to Kubernetes' termination-message file. While it runs, rank 0 publishes a
`ProgressSnapshot`. Supervisors decide from these alone, so the table below is the whole vocabulary.

The termination message is capped (4096 bytes, by the kubelet), and a result with baselines, a reference
model and fit diagnostics can be larger. So in a cluster the whole result travels another way: rank 0,
once finished, keeps serving it at `GET /result` (its snapshot says `resultReady`) until the operator
confirms it has it, or until a bounded handover time runs out (`--result-handover-seconds`); the
termination message carries the whole result when it fits, else a shortened one whose `resultFile` says
where the whole `result.json` is (see `TrainerResult.termination_message`). The status never silently
loses a field: either it has the whole result, or it says where the whole result is.

| exit | reason              | retryable | meaning                                                        |
|------|---------------------|-----------|----------------------------------------------------------------|
| 0    | Succeeded           | -         | trained to the end and exported                                |
| 0    | EarlyStopped        | -         | validation stopped improving; best checkpoint exported         |
| 2    | InvalidConfig       | no        | the manifest cannot be run as written                          |
| 3    | DataError           | no        | a dataset file is missing, unreadable, malformed or leaky      |
| 4    | ModelError          | no        | the model cannot be loaded                                     |
| 5    | NonFiniteLoss       | no*       | loss became NaN/inf (*retryable with restartOnNonFiniteLoss)   |
| 6    | OutOfMemory         | yes       | the accelerator or host ran out of memory; try a smaller batch |
| 7    | PeerLost            | yes       | a collective timed out or a peer process vanished              |
| 8    | Interrupted         | yes       | SIGTERM: checkpointed and stopped (pod deletion, Ctrl-C)       |
| 9    | CheckpointUnreadable| yes       | reading a checkpoint failed (I/O), which proves no damage      |
| 10   | Superseded          | no        | a newer attempt (or job) holds the checkpoint folder: stopped  |
|      |                     |           | without writing more (kubetune.trainer.fencing)                |
| 11   | Hung                | yes       | the gang stopped moving: a rank stopped reporting, or every    |
|      |                     |           | rank waits for ever (kubetune.policies.hang)                   |
| 1    | (uncaught error)    | yes       | an unexpected exception; the traceback is in the log           |
| 128+N| (signal N)          | yes       | killed by a signal (137: SIGKILL, often the OOM killer)        |
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from kubetune.api.base import ApiModel, doc
from kubetune.api.status import EvaluationSummary, Metrics, Progress

#: The kubelet keeps at most 4096 bytes of a container's termination message (it cuts the rest, which
#: would leave unreadable JSON); `TrainerResult.termination_message` always fits. Measured in bytes.
TERMINATION_MESSAGE_LIMIT = 4096
#: Longest `reason` and `resultFile` kept in a shortened termination message, in characters: both are
#: short in practice; the bound only makes "always fits" hold for any input.
_SHORT_FIELD = 512


class ExitReason(Enum):
    """Why a trainer process ended: (exit code, retryable, wire name)."""

    SUCCEEDED = (0, False, "Succeeded")
    EARLY_STOPPED = (0, False, "EarlyStopped")
    INVALID_CONFIG = (2, False, "InvalidConfig")
    DATA_ERROR = (3, False, "DataError")
    MODEL_ERROR = (4, False, "ModelError")
    NON_FINITE_LOSS = (5, False, "NonFiniteLoss")
    OUT_OF_MEMORY = (6, True, "OutOfMemory")
    PEER_LOST = (7, True, "PeerLost")
    INTERRUPTED = (8, True, "Interrupted")
    CHECKPOINT_UNREADABLE = (9, True, "CheckpointUnreadable")
    SUPERSEDED = (10, False, "Superseded")
    """Not retryable: the newer attempt that fenced this one out is the one that runs."""
    HUNG = (11, True, "Hung")
    """Reported by the rank that saw the gang stop moving (kubetune.trainer.hang_watch)."""

    @property
    def exit_code(self) -> int:
        return self.value[0]

    @property
    def retryable(self) -> bool:
        return self.value[1]

    @property
    def wire_name(self) -> str:
        """CamelCase, as in the status and the termination message."""
        return self.value[2]

    @classmethod
    def from_wire(cls, name: str) -> ExitReason | None:
        return next((reason for reason in cls if reason.wire_name == name), None)

    @classmethod
    def from_exit_code(cls, code: int) -> ExitReason | None:
        """The reason an exit code stands for; None for 1, signals and unknown codes (code 0 is ambiguous
        between Succeeded and EarlyStopped: read the result for which)."""
        return next((reason for reason in cls if reason.exit_code == code and code != 0), None)


class FitReport(ApiModel):
    """A fit diagnostic the trainer reports (see kubetune.policies.fit), to become a job condition."""

    type: Literal["OverfittingSuspected", "UnderfittingSuspected"] = doc("type of the condition.")
    status: Literal["True", "False"] = doc("status: True while the sign is present.")
    reason: str = doc("reason: EvalLossRising, LossPlateauHigh, TrainingDiverged or FitLooksHealthy.")
    message: str = doc("message: what was seen and the usual remedies.")
    since_step: int | None = doc("sinceStep: optimizer step where the sign began.", default=None)


class EarlierJob(ApiModel):
    """The job whose checkpoints a run continues: the same manifest applied again, with a new uid
    (kubetune.policies.folder_owner)."""

    name: str = doc("name of the earlier FineTuneJob.")
    namespace: str | None = doc("namespace of the earlier FineTuneJob.", default=None)
    uid: str | None = doc("uid: metadata.uid of the earlier FineTuneJob.", default=None)
    checkpoints: str = doc("checkpoints: the folder it left them in, as the trainer sees it.")


class TrainerResult(ApiModel):
    """What a finished trainer reports (rank 0's `result.json`; the termination message is its JSON)."""

    outcome: Literal["Succeeded", "EarlyStopped", "Failed", "Interrupted"] = doc("outcome of the run.")
    reason: str = doc("reason: an ExitReason wire name (e.g. DataError), or Succeeded / EarlyStopped.")
    message: str = doc("message: one human-readable sentence, naming the file, field or step at fault.")
    retryable: bool = doc("retryable: whether restarting the gang from the last checkpoint may help.")
    step: int = doc("step: optimizer steps completed.", default=0, ge=0)
    total_steps: int = doc("totalSteps: optimizer steps planned.", default=0, ge=0)
    best_metric: float | None = doc("bestMetric: best value of the early-stopping metric.", default=None)
    best_step: int | None = doc("bestStep: step of the best evaluation.", default=None)
    output_path: str | None = doc("outputPath: where the model was exported.", default=None)
    evaluation: EvaluationSummary | None = doc("evaluation: base vs fine-tuned.", default=None)
    metrics: Metrics | None = doc(
        "metrics: the last training and validation figures, so the final status has them even when no "
        "progress poll landed during a short run.",
        default=None,
    )
    fit: list[FitReport] = doc("fit: over- and under-fitting diagnostics at the end.", default=[])
    result_file: str | None = doc(
        "resultFile: set only on a shortened result (a termination message too small for the whole one): "
        "where the whole result.json is. None: this is the whole result.",
        default=None,
    )
    resumed_from_job: EarlierJob | None = doc(
        "resumedFromJob: the earlier job whose checkpoints this run continued, when it was not this job.",
        default=None,
    )

    def wire(self) -> str:
        """The result as one JSON line (camelCase, no nulls): what GET /result serves."""
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def termination_message(self, result_file: str = "result.json") -> str:
        """The result as one JSON line of at most TERMINATION_MESSAGE_LIMIT bytes: the whole result when it
        fits; else shortened step by step (the approaches' rows go first, then fit diagnostics and the rest
        of the evaluation but the verdict, then the verdict, then the message is cut) and marked with
        `resultFile`, so a reader knows it is not the whole result and where the whole one is."""
        whole = self.wire()
        if _fits(whole):
            return whole
        short = {"result_file": result_file[:_SHORT_FIELD], "reason": self.reason[:_SHORT_FIELD]}
        marked = self.model_copy(update=short)
        evaluation = self.evaluation
        steps: list[dict[str, object]] = []
        if evaluation is not None:
            steps.append({"evaluation": evaluation.model_copy(update={"approaches": None})})
            steps.append({"evaluation": EvaluationSummary(verdict=evaluation.verdict), "fit": []})
        steps.append({"evaluation": None, "fit": []})
        for update in steps:
            text = marked.model_copy(update=update).wire()
            if _fits(text):
                return text
        bare = marked.model_copy(update={"evaluation": None, "fit": []})
        if not _fits(bare.model_copy(update={"message": ""}).wire()):  # an absurdly long path
            bare = bare.model_copy(update={"output_path": None, "metrics": None})
        return _cut_message(bare)


def _fits(text: str) -> bool:
    return len(text.encode()) <= TERMINATION_MESSAGE_LIMIT


def _cut_message(result: TrainerResult) -> str:
    """The result's JSON with its message cut to the longest prefix that fits (JSON escaping makes the
    byte count of a prefix unpredictable, so the prefix length is searched)."""
    if _fits(result.wire()):
        return result.wire()
    low, high = 0, len(result.message)
    while low < high:
        middle = (low + high + 1) // 2
        if _fits(result.model_copy(update={"message": result.message[:middle] + "..."}).wire()):
            low = middle
        else:
            high = middle - 1
    return result.model_copy(update={"message": result.message[:low] + "..."}).wire()


class ProgressSnapshot(ApiModel):
    """What rank 0 publishes while training (`progress.json` and `GET /progress` beside `/metrics`)."""

    attempt: int | None = doc("attempt the trainer belongs to (from KUBETUNE_ATTEMPT).", default=None)
    progress: Progress = doc("progress of training.")
    metrics: Metrics = doc("metrics: latest figures.")
    phase: Literal["Starting", "Evaluating", "Training", "Checkpointing", "Exporting", "Finished"] = doc(
        "phase: what rank 0 is doing now.", default="Training"
    )
    updated_at: float = doc("updatedAt: Unix time of this snapshot, in seconds.")
    fit: list[FitReport] = doc("fit: over- and under-fitting diagnostics so far.", default=[])
    result_ready: bool = doc(
        "resultReady: the run has ended and its whole TrainerResult waits at GET /result until the supervisor "
        "confirms it has it (DELETE /result) or the handover time runs out.",
        default=False,
    )
    resumed_from_job: EarlierJob | None = doc(
        "resumedFromJob: the earlier job whose checkpoints this run continues, when it is not this job.",
        default=None,
    )
