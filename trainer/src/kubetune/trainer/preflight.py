"""Every rank checks its machine and its inputs before it joins the gang or loads anything.

A missing GPU, a precision the device cannot compute in, an unreadable model or dataset, a checkpoint
folder that cannot hold one checkpoint: each would otherwise surface minutes later as a library's
traceback (or, worse, an exit the supervisor retries), and each fails the same way on every attempt.
Found here they become permanent failures (`ConfigError`, `DataError`, `ModelError`: no restart) with a
message naming the field to change. The decisions are `kubetune.policies.preflight`; this module
observes the facts they need (torch's view of the devices, the file system) and raises.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

from kubetune.api.invocation import ACCELERATOR_ENV
from kubetune.api.job import FineTuneJob, FineTuneJobSpec
from kubetune.api.outcome import ExitReason
from kubetune.api.training import Accelerator, ModelSpec
from kubetune.policies.preflight import (
    Devices,
    Problem,
    checkpoint_bytes_floor,
    device_problems,
    disk_problem,
    rank_accelerator,
)
from kubetune.trainer import ownership
from kubetune.trainer.config import RunPaths, resolve_path
from kubetune.trainer.errors import ConfigError, DataError, ModelError, TrainerError

#: The files whose sizes add up to a model's weights (what a checkpoint and the export scale with).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")

_ERRORS: dict[ExitReason, type[TrainerError]] = {
    ExitReason.INVALID_CONFIG: ConfigError,
    ExitReason.DATA_ERROR: DataError,
    ExitReason.MODEL_ERROR: ModelError,
}


def observe_devices() -> Devices:
    """The visible CUDA devices' compute capabilities and the CPU's fp16 support, as torch sees them
    (no CUDA context is created: that would take memory on GPU 0 in every rank)."""
    import torch

    capabilities = tuple(
        torch.cuda.get_device_properties(index).major
        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    )
    try:
        cpu_fp16 = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # an older torch without the probe: assume no kernels
        cpu_fp16 = False
    return Devices(cuda_capabilities=capabilities, cpu_fp16=cpu_fp16)


def accelerator_of_this_rank(job: FineTuneJob) -> Accelerator:
    """The manifest's accelerator, or the one its supervisor chose when it is unset (see the policy)."""
    return rank_accelerator(job.spec.distributed.accelerator, os.environ.get(ACCELERATOR_ENV) == "cpu")


def check(job: FineTuneJob, paths: RunPaths, devices: Devices | None = None) -> FineTuneJob:
    """The job with the accelerator this rank trains on written into it (an unset one decided), so that
    every later part sees the same; raises the TrainerError of the first problem found (its message lists
    them all) when the machine or the inputs cannot run the job."""
    spec = job.spec
    accelerator = accelerator_of_this_rank(job)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    problems = device_problems(
        accelerator,
        spec.distributed.accelerator,
        spec.distributed.precision,
        devices or observe_devices(),
        ranks_here,
    )
    base = paths.manifest.parent
    problems += input_problems(spec, base)
    if not problems:
        problems += storage_problems(spec, paths, base)
    if not problems:  # a folder holding checkpoints of a different run (kubetune.trainer.ownership)
        problems += ownership.problems(job, paths.checkpoints)
    if problems:
        raise _ERRORS[problems[0].reason]("; ".join(str(problem) for problem in problems), retryable=False)
    distributed = spec.distributed.model_copy(update={"accelerator": accelerator})
    return job.model_copy(update={"spec": spec.model_copy(update={"distributed": distributed})})


def input_problems(spec: FineTuneJobSpec, base: Path) -> list[Problem]:
    """Model folders and dataset files that are missing or that this process may not read."""
    problems = [
        problem
        for field, model in (("spec.model", spec.model), ("spec.evaluation.referenceModel", _reference(spec)))
        if model is not None
        for problem in _model_problems(field, model, base)
    ]
    for field, value in (
        ("spec.dataset.train", spec.dataset.train),
        ("spec.dataset.validation", spec.dataset.validation),
        ("spec.dataset.test", spec.dataset.test),
    ):
        if value is not None and (why := _unreadable(resolve_path(value, base), "file")):
            problems.append(Problem(field, f"{value}: {why}", ExitReason.DATA_ERROR))
    return problems


def _reference(spec: FineTuneJobSpec) -> ModelSpec | None:
    return spec.evaluation.reference_model if spec.evaluation else None


def _model_problems(prefix: str, model: ModelSpec, base: Path) -> list[Problem]:
    if model.source.startswith("hf://"):
        return []  # the hub (or its offline cache) is only known when loading; model.py names the source then
    source = resolve_path(model.source, base)
    if why := _unreadable(source, "folder" if model.gguf_file else "file or folder"):
        return [Problem(f"{prefix}.source", f"{model.source}: {why}", ExitReason.MODEL_ERROR)]
    if model.gguf_file and (why := _unreadable(source / model.gguf_file, "file")):
        return [Problem(f"{prefix}.ggufFile", f"{model.gguf_file}: {why}", ExitReason.MODEL_ERROR)]
    if not model.gguf_file and source.is_dir() and (names := _unreadable_files(source)):
        why = (
            f"cannot read {', '.join(names)} as user {os.getuid()}: make the model's files readable by the "
            "trainer's user (the trainer image runs as uid 1000)"
        )
        return [Problem(f"{prefix}.source", f"{model.source}: {why}", ExitReason.MODEL_ERROR)]
    return []


def _unreadable_files(folder: Path) -> list[str]:
    """The files of a model folder this process may not read: a claim written by another user (safetensors
    writes weights readable by their owner only), which transformers would report as missing files."""
    return sorted(path.name for path in folder.iterdir() if path.is_file() and not os.access(path, os.R_OK))


def _unreadable(path: Path, kind: Literal["file", "folder", "file or folder"]) -> str | None:
    """Why this process cannot read `path` as a `kind`; None when it can."""
    if not path.exists():
        return f"not found (resolved to {path})"
    if kind == "file" and path.is_dir():
        return f"{path} is a folder, not a file"
    if kind == "folder" and not path.is_dir():
        return f"{path} is not a folder"
    if not os.access(path, os.R_OK | os.X_OK if path.is_dir() else os.R_OK):
        return f"{path}: permission denied (this process runs as uid {os.getuid()})"
    return None


def storage_problems(spec: FineTuneJobSpec, paths: RunPaths, base: Path) -> list[Problem]:
    """A checkpoint folder this process cannot write, or without room for one checkpoint and the export."""
    field = "spec.storage.checkpoints" if spec.storage.checkpoints else "checkpoints"
    remedy = (
        "point spec.storage.checkpoints at a larger volume"
        if spec.storage.checkpoints
        else "set spec.storage.checkpoints (in a cluster) or choose a --workdir on a larger disk (kubetune run)"
    )
    existing = _nearest_existing(paths.checkpoints)
    if not os.access(existing, os.W_OK | os.X_OK):
        return [Problem(field, f"{existing}: not writable by this process (uid {os.getuid()}); {remedy}")]
    model_bytes = 0 if spec.model.source.startswith("hf://") else _weight_bytes(resolve_path(spec.model.source, base))
    needed = checkpoint_bytes_floor(model_bytes, full_fine_tuning=not spec.method.uses_lora)
    problem = disk_problem(field, str(paths.checkpoints), shutil.disk_usage(existing).free, needed, remedy)
    return [problem] if problem else []


def _nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (a checkpoint folder is created on the first save)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _weight_bytes(source: Path) -> int:
    """Bytes of the weight files of a model folder (or of one file)."""
    files = [source] if source.is_file() else [f for f in source.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files if f.suffix in WEIGHT_SUFFIXES)
