"""Every way a trainer can fail, mapped to the supervisor's vocabulary in one place.

The operator and the local runner decide whether to restart from the exit code alone
(`kubetune.api.outcome.ExitReason`). Code anywhere in the trainer raises a `TrainerError` carrying its
reason; `classify` turns everything else (out-of-memory, a vanished peer, a library's error) into a
reason too, so `main` has exactly one place that chooses the exit code.
"""

from __future__ import annotations

from kubetune.api.outcome import ExitReason
from kubetune.policies.fit import divergence_remedy


class TrainerError(Exception):
    """A failure whose exit reason is known where it is raised. The message names the file, field or
    step at fault and is shown to the user as is (status message, termination message, log)."""

    reason: ExitReason = ExitReason.INVALID_CONFIG

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = self.reason.retryable if retryable is None else retryable


class ConfigError(TrainerError):
    """The manifest or the command line cannot be run as written."""

    reason = ExitReason.INVALID_CONFIG


class DataError(TrainerError):
    """A dataset file is missing, unreadable, malformed or leaks into validation."""

    reason = ExitReason.DATA_ERROR


class ModelError(TrainerError):
    """The pre-trained model or its tokenizer cannot be loaded."""

    reason = ExitReason.MODEL_ERROR


class NonFiniteLossError(TrainerError):
    """The loss became NaN or infinite on some rank (all ranks agree before raising). The message gets
    the remedy appended: a non-finite loss is a diverged run, and its fix is never more of the same."""

    reason = ExitReason.NON_FINITE_LOSS

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(f"{message}: training diverged; {divergence_remedy()}", retryable=retryable)


class Interrupted(TrainerError):
    """SIGTERM/SIGINT arrived; a checkpoint was written at the step boundary and the run stopped."""

    reason = ExitReason.INTERRUPTED


class CheckpointUnreadable(TrainerError):
    """Reading a checkpoint on resume failed with an error that proves no damage (EIO, ESTALE, a permission):
    retryable, so that the next attempt reads the same checkpoint again rather than an older one."""

    reason = ExitReason.CHECKPOINT_UNREADABLE


class Superseded(TrainerError):
    """A newer attempt of the job (or another job) claimed the checkpoint folder: this rank stopped without
    writing more (kubetune.trainer.fencing). Not retryable: the attempt that fenced this one out runs."""

    reason = ExitReason.SUPERSEDED


class PeerFailedToResume(TrainerError):
    """Another rank hit a retryable error while resuming; this rank stops with it. PeerLost: its own cause
    is the other rank's, which the supervisors prefer (an echo, not a root cause)."""

    reason = ExitReason.PEER_LOST


#: Substrings of error messages (lower-cased) from torch.distributed, gloo and NCCL when a peer dies or
#: a collective times out. These libraries raise plain RuntimeError/DistBackendError, so the text is
#: all there is to go by.
_PEER_LOST_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "nccl communicator was aborted",
    "ncclremoteerror",
    "socket",
    "gloo",
)
_OOM_MARKERS = ("out of memory", "cannot allocate memory", "std::bad_alloc", "defaultcpuallocator: can't allocate")


def proves_nothing(error: BaseException) -> bool:
    """Whether an error met while reading a checkpoint says nothing about the checkpoint's files: an
    OSError other than a missing file (EIO, ESTALE, EACCES), running out of memory, or a lost peer. A
    missing file is proof (of an incomplete checkpoint), and so is anything a library raises on the
    bytes it read (an unpickling error, a shape that does not fit)."""
    if isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return False
    return isinstance(error, OSError) or _is_oom(error) or is_peer_lost(error)


def _is_oom(error: BaseException) -> bool:
    import torch

    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error).lower() for marker in _OOM_MARKERS)


def is_peer_lost(error: BaseException) -> bool:
    """A collective failed or timed out, or a peer process vanished (torch.distributed, gloo, NCCL)."""
    import torch.distributed as dist

    if isinstance(error, dist.DistBackendError | dist.DistNetworkError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError | ConnectionError) and any(marker in text for marker in _PEER_LOST_MARKERS)


def classify(error: BaseException, micro_batch_size: int | None = None) -> tuple[ExitReason | None, str, bool]:
    """(reason, one-line message, retryable) for any exception; reason None means an unexpected error
    (exit 1, retryable: the traceback is in the log)."""
    if isinstance(error, TrainerError):
        return error.reason, error.message, error.retryable
    if _is_oom(error):
        hint = f" (now {micro_batch_size})" if micro_batch_size else ""
        return (
            ExitReason.OUT_OF_MEMORY,
            f"out of memory: {_first_line(error)}; try a smaller hyperparameters.microBatchSize{hint} with a "
            "larger gradientAccumulationSteps, a shorter dataset.maxSeqLength, or a higher distributed.zeroStage",
            True,
        )
    if is_peer_lost(error):
        return ExitReason.PEER_LOST, f"lost contact with another rank: {_first_line(error)}", True
    return None, unexpected_error_message(error), True


#: What to do about an error nobody foresaw, said wherever one is reported (its name alone helps no one).
UNEXPECTED_ERROR_ADVICE = (
    "this is not one of the failures kubetune recognises; the traceback is in this rank's log "
    "(`kubectl logs` of the worker pod, or logs/attempt-N/rank-R.log in the `kubetune run` workdir): if it "
    "points at your manifest, data or model, fix that; otherwise please report it with the log"
)


def unexpected_error_message(error: BaseException) -> str:
    """One line for an unforeseen exception: what it said, and what to do (its type's name alone helps no
    one). The detail is kept short so that the advice survives a shortened termination message."""
    return f"unexpected error ({type(error).__name__}: {_first_line(error)[:200]}); {UNEXPECTED_ERROR_ADVICE}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:400] if text else type(error).__name__
