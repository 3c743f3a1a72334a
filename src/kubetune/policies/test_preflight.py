"""Preflight as tables: machines and specs in, the accelerator chosen and the problems found out."""

from __future__ import annotations

import pytest

from kubetune.api.outcome import ExitReason
from kubetune.api.training import Accelerator
from kubetune.policies.preflight import (
    ACCELERATOR_FIELD,
    PRECISION_FIELD,
    PROCESSES_FIELD,
    Devices,
    checkpoint_bytes_floor,
    choose_local_accelerator,
    device_problems,
    disk_problem,
    rank_accelerator,
)

NO_GPU = Devices()
NO_GPU_FP16_CPU = Devices(cpu_fp16=True)
ONE_H100 = Devices(cuda_capabilities=(9,))
TWO_A100 = Devices(cuda_capabilities=(8, 8))
ONE_V100 = Devices(cuda_capabilities=(7,))
ONE_P100 = Devices(cuda_capabilities=(6,))
GiB = 2**30


@pytest.mark.parametrize(
    ("requested", "devices", "chosen", "notice"),
    [
        (None, NO_GPU, "cpu", "no CUDA device visible: training on the CPU"),
        (None, TWO_A100, "nvidia-gpu", "training on 2 visible CUDA device(s)"),
        ("cpu", TWO_A100, "cpu", None),  # asked for: no notice, whatever the machine
        ("nvidia-gpu", NO_GPU, "nvidia-gpu", None),  # asked for: kept, and refused by device_problems
    ],
)
def test_kubetune_run_decides_an_unset_accelerator_from_the_machine(
    requested: Accelerator | None, devices: Devices, chosen: str, notice: str | None
) -> None:
    choice = choose_local_accelerator(requested, devices)
    assert choice.accelerator == chosen
    if notice is None:
        assert choice.notice is None
    else:
        assert choice.notice is not None and notice in choice.notice and ACCELERATOR_FIELD in choice.notice
        assert "\n" not in choice.notice


@pytest.mark.parametrize(
    ("requested", "supervisor_chose_cpu", "accelerator"),
    [
        ("nvidia-gpu", True, "nvidia-gpu"),
        ("cpu", False, "cpu"),
        (None, True, "cpu"),  # kubetune run found no GPU and said so through DS_ACCELERATOR=cpu
        (None, False, "nvidia-gpu"),  # a pod of an unset job, or a rank started by hand: the cluster default
    ],
)
def test_a_rank_reads_an_unset_accelerator_from_its_supervisor(
    requested: Accelerator | None, supervisor_chose_cpu: bool, accelerator: str
) -> None:
    assert rank_accelerator(requested, supervisor_chose_cpu) == accelerator


# (accelerator, as requested, precision, machine, ranks here, the problems: (field, words) each)
DEVICE_CASES: list[tuple[Accelerator, Accelerator | None, str, Devices, int, list[tuple[str, str]]]] = [
    ("cpu", "cpu", "fp32", NO_GPU, 2, []),
    ("cpu", None, "bf16", NO_GPU, 2, []),  # DeepSpeed trains bf16 on any CPU
    ("cpu", "cpu", "fp16", NO_GPU, 1, [(PRECISION_FIELD, "fp16 has no kernels on this CPU")]),
    ("cpu", "cpu", "fp16", NO_GPU_FP16_CPU, 1, []),
    (
        "nvidia-gpu",
        "nvidia-gpu",
        "bf16",
        NO_GPU,
        1,
        [(ACCELERATOR_FIELD, "nvidia-gpu but no CUDA device is visible")],
    ),
    (
        "nvidia-gpu",
        None,
        "bf16",
        NO_GPU,
        1,
        [(ACCELERATOR_FIELD, "unset, which means nvidia-gpu outside `kubetune run`, but no CUDA device")],
    ),
    ("nvidia-gpu", "nvidia-gpu", "bf16", TWO_A100, 2, []),
    ("nvidia-gpu", "nvidia-gpu", "bf16", ONE_H100, 2, [(PROCESSES_FIELD, "2 ranks on this machine need one CUDA")]),
    ("nvidia-gpu", "nvidia-gpu", "bf16", ONE_V100, 1, [(PRECISION_FIELD, "this one is 7.x")]),
    ("nvidia-gpu", "nvidia-gpu", "fp16", ONE_V100, 1, []),
    ("nvidia-gpu", "nvidia-gpu", "fp16", ONE_P100, 1, [(PRECISION_FIELD, "fp16 training needs")]),
    ("nvidia-gpu", "nvidia-gpu", "fp32", ONE_P100, 1, []),
]


@pytest.mark.parametrize(
    ("accelerator", "requested", "precision", "devices", "ranks", "expected"),
    DEVICE_CASES,
    ids=[f"{c[0]}({c[1]}) {c[2]} on {c[3].cuda_capabilities or 'cpu'} x{c[4]}" for c in DEVICE_CASES],
)
def test_device_problems_name_the_field_and_the_fix(
    accelerator: Accelerator,
    requested: Accelerator | None,
    precision: str,
    devices: Devices,
    ranks: int,
    expected: list[tuple[str, str]],
) -> None:
    problems = device_problems(accelerator, requested, precision, devices, ranks)
    assert [p.field for p in problems] == [field for field, _ in expected], problems
    for problem, (_, words) in zip(problems, expected, strict=True):
        assert words in problem.message and problem.reason is ExitReason.INVALID_CONFIG
        assert any(remedy in problem.message for remedy in ("use ", "set it to", "lower it to")), problem


@pytest.mark.parametrize(
    ("model_gib", "full", "floor_gib"),
    [
        (4.0, True, 16.0),  # 1 G parameters at most: 12 GiB of optimizer state, 2 + 2 GiB of weights
        (4.0, False, 4.0),  # LoRA: the weights in the checkpoint and the export, at least bf16
        (0.0, True, 0.0),  # a hub model: its size is not known before loading, nothing is refused
    ],
)
def test_the_checkpoint_floor_never_overstates(model_gib: float, full: bool, floor_gib: float) -> None:
    assert checkpoint_bytes_floor(int(model_gib * GiB), full) == pytest.approx(floor_gib * GiB)


@pytest.mark.parametrize(("free_gib", "needed_gib", "refused"), [(10, 14, True), (14, 14, False), (100, 14, False)])
def test_disk_problem(free_gib: int, needed_gib: int, refused: bool) -> None:
    problem = disk_problem("spec.storage.checkpoints", "/ckpt", free_gib * GiB, needed_gib * GiB, "go elsewhere")
    assert (problem is not None) == refused
    if problem is not None:
        assert str(problem) == (
            "spec.storage.checkpoints: /ckpt has 10.0 GiB free, but one checkpoint and the export of this model "
            "need at least 14.0 GiB; free space there or go elsewhere"
        )
