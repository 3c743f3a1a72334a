"""Can this machine run the job as written? Decided before the gang starts, from what the machine offers.

A job whose accelerator is missing, whose precision the device cannot compute in, or whose checkpoints
cannot fit on the disk fails the same way on every attempt: restarting it only wastes the user's first
hour. So these are permanent failures (exit 2, `InvalidConfig`), found on every rank before it loads a
model or joins the gang, and by `kubetune run` before it starts any rank — each naming the field to
change. The facts (`Devices`) are observed with torch by the trainer and the local runner; the
decisions are here, pure, so that a table of machines and specs tests them.

An unset `distributed.accelerator` means nvidia-gpu in a cluster (the pods ask for GPUs) and for a rank
started by hand; `kubetune run` looks at the machine instead and trains on the CPU when no CUDA device
is visible, saying so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.api.outcome import ExitReason
from kubetune.api.training import CLUSTER_DEFAULT_ACCELERATOR, Accelerator

ACCELERATOR_FIELD = "spec.distributed.accelerator"
PRECISION_FIELD = "spec.distributed.precision"
PROCESSES_FIELD = "spec.distributed.processesPerWorker"
#: Lowest CUDA compute capability with native bf16 (Ampere); older GPUs only emulate it, very slowly.
BF16_MIN_CAPABILITY = 8
#: Lowest CUDA compute capability DeepSpeed trains fp16 on (Volta).
FP16_MIN_CAPABILITY = 7
#: Bytes of optimizer state per trained parameter in a full fine-tune's checkpoint: AdamW's two moments
#: and the fp32 master weights, 4 bytes each (ZeRO keeps the master copy even for fp32 training's module).
OPTIMIZER_BYTES_PER_PARAMETER = 12
#: Fewest bytes a parameter takes in the weights a checkpoint or an export writes (bf16 or fp16).
LEAST_BYTES_PER_SAVED_PARAMETER = 2
#: Most bytes a parameter takes in the model's files (fp32), so that a count from file sizes is a floor.
MOST_BYTES_PER_STORED_PARAMETER = 4


@dataclass(frozen=True)
class Devices:
    """What this machine offers a trainer, as torch sees it."""

    cuda_capabilities: tuple[int, ...] = ()
    """The major CUDA compute capability of each visible GPU (none: no CUDA device is visible)."""
    cpu_fp16: bool = False
    """Whether the CPU has half-precision kernels (oneDNN fp16, DeepSpeed's own test)."""

    @property
    def cuda_devices(self) -> int:
        return len(self.cuda_capabilities)


@dataclass(frozen=True)
class Problem:
    """One reason the job cannot run here, naming the field to change and how."""

    field: str
    message: str
    reason: ExitReason = ExitReason.INVALID_CONFIG

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class AcceleratorChoice:
    """The accelerator `kubetune run` uses, and the line that says so when the machine decided it."""

    accelerator: Accelerator
    notice: str | None = None


def choose_local_accelerator(requested: Accelerator | None, devices: Devices) -> AcceleratorChoice:
    """`kubetune run`: the accelerator asked for, or — unset — the GPUs when one is visible, else the CPU."""
    if requested is not None:
        return AcceleratorChoice(requested)
    if devices.cuda_devices:
        return AcceleratorChoice(
            "nvidia-gpu", f"{ACCELERATOR_FIELD} is unset: training on {devices.cuda_devices} visible CUDA device(s)"
        )
    return AcceleratorChoice(
        "cpu", f"no CUDA device visible: training on the CPU ({ACCELERATOR_FIELD} is unset; set it to choose)"
    )


def rank_accelerator(requested: Accelerator | None, supervisor_chose_cpu: bool) -> Accelerator:
    """A trainer rank's accelerator: the manifest's; unset, the CPU when its supervisor chose it (the
    `DS_ACCELERATOR=cpu` a supervisor passes), else the cluster's default, nvidia-gpu."""
    if requested is not None:
        return requested
    return "cpu" if supervisor_chose_cpu else CLUSTER_DEFAULT_ACCELERATOR


def device_problems(
    accelerator: Accelerator, requested: Accelerator | None, precision: str, devices: Devices, ranks_here: int
) -> list[Problem]:
    """Why `ranks_here` ranks on this machine cannot train on `accelerator` in `precision`, if they cannot.
    `requested` is the manifest's value (None: unset), for a message that says what the user wrote."""
    if accelerator == "nvidia-gpu":
        return _gpu_problems(requested, precision, devices, ranks_here)
    if precision == "fp16" and not devices.cpu_fp16:
        return [
            Problem(PRECISION_FIELD, "fp16 has no kernels on this CPU (fp16 training needs a GPU); use bf16 or fp32")
        ]
    return []


def _gpu_problems(requested: Accelerator | None, precision: str, devices: Devices, ranks_here: int) -> list[Problem]:
    if not devices.cuda_devices:
        asked = "nvidia-gpu" if requested else "unset, which means nvidia-gpu outside `kubetune run`,"
        return [
            Problem(
                ACCELERATOR_FIELD,
                f"{asked} but no CUDA device is visible (torch.cuda.is_available() is False); set it to cpu to "
                "train on the CPU, or run where a GPU and its driver are visible",
            )
        ]
    problems = []
    if ranks_here > devices.cuda_devices:
        problems.append(
            Problem(
                PROCESSES_FIELD,
                f"{ranks_here} ranks on this machine need one CUDA device each, but {devices.cuda_devices} "
                f"{'is' if devices.cuda_devices == 1 else 'are'} visible; lower it to {devices.cuda_devices}",
            )
        )
    oldest = min(devices.cuda_capabilities[:ranks_here])
    if precision == "bf16" and oldest < BF16_MIN_CAPABILITY:
        problems.append(
            Problem(
                PRECISION_FIELD,
                f"bf16 needs a GPU of compute capability {BF16_MIN_CAPABILITY}.0 (Ampere) or newer, and this one is "
                f"{oldest}.x (it would only emulate bf16, very slowly); use fp16",
            )
        )
    if precision == "fp16" and oldest < FP16_MIN_CAPABILITY:
        problems.append(
            Problem(
                PRECISION_FIELD,
                f"fp16 training needs a GPU of compute capability {FP16_MIN_CAPABILITY}.0 or newer, and this one is "
                f"{oldest}.x; use fp32",
            )
        )
    return problems


def checkpoint_bytes_floor(model_file_bytes: int, full_fine_tuning: bool) -> int:
    """The fewest bytes one checkpoint plus the export of a model whose weight files take
    `model_file_bytes` can need: a floor, so that a refusal based on it is never wrong.

    Parameters are counted as if the files held fp32 (the most bytes per parameter); a checkpoint holds
    the weights (at least bf16) and, for full fine-tuning, the optimizer state; the export the weights."""
    parameters = model_file_bytes // MOST_BYTES_PER_STORED_PARAMETER
    optimizer = OPTIMIZER_BYTES_PER_PARAMETER * parameters if full_fine_tuning else 0
    return optimizer + 2 * LEAST_BYTES_PER_SAVED_PARAMETER * parameters


def disk_problem(field: str, folder: str, free_bytes: int, needed_bytes: int, remedy: str) -> Problem | None:
    """A checkpoint folder without room for even one checkpoint and the export; `remedy` says where else
    to put them."""
    if free_bytes >= needed_bytes:
        return None
    return Problem(
        field,
        f"{folder} has {_gib(free_bytes)} free, but one checkpoint and the export of this model need at least "
        f"{_gib(needed_bytes)}; free space there or {remedy}",
    )


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"
