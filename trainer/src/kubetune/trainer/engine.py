"""The DeepSpeed engine for a FineTuneJob: its config, the optimizer and the learning-rate schedule.

DeepSpeed does the distributed work (ZeRO partitioning, offload, mixed precision, gradient
accumulation, clipping, checkpoint files); this module only translates the spec into its config.
With bf16 or fp16 weights, gradients are accumulated over micro-batches in fp32 wherever DeepSpeed can
(`grad_accum_dtype`): adding many small bf16 gradients in bf16 loses them.
The optimizer is torch's AdamW (decoupled weight decay, not applied to biases and norm weights, as is
usual for transformers); the schedule is transformers' `get_scheduler` (constant / linear / cosine
after a linear warm-up), handed to DeepSpeed so that it steps and checkpoints it with the optimizer.
"""

from __future__ import annotations

import math
from typing import Any

from kubetune.api.job import FineTuneJobSpec

#: Schedule names in transformers for the spec's `scheduler` values.
SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def deepspeed_config(spec: FineTuneJobSpec, world: int) -> dict[str, Any]:
    """The DeepSpeed config dict for `spec` on `world` processes."""
    hp = spec.hyperparameters
    dist = spec.distributed
    zero: dict[str, Any] = {"stage": dist.zero_stage}
    if dist.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": dist.accelerator != "cpu"}
    if dist.zero_stage == 3:
        # The export gathers the full parameters itself; do not write a 16-bit copy on every save.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": hp.micro_batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "train_batch_size": hp.micro_batch_size * hp.gradient_accumulation_steps * world,
        "zero_optimization": zero,
        "bf16": {"enabled": dist.precision == "bf16"},
        "fp16": {"enabled": dist.precision == "fp16", "initial_scale_power": 16},
        # A torch optimizer with ZeRO-Offload is allowed: DeepSpeedCPUAdam would need a compiled op.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if hp.max_grad_norm > 0:
        config["gradient_clipping"] = hp.max_grad_norm
    accumulate = grad_accum_dtype(dist.precision, dist.zero_stage, dist.grad_accum_dtype)
    if accumulate is not None:
        config["data_types"] = {"grad_accum_dtype": accumulate}
    return config


def grad_accum_dtype(precision: str, zero_stage: int, requested: str | None) -> str | None:
    """DeepSpeed's `data_types.grad_accum_dtype` for the spec's gradAccumDtype; None: DeepSpeed's default
    (the training precision). DeepSpeed accumulates in fp32 with bf16 or fp16 weights only inside its ZeRO
    optimizers, so unset means fp32 at stage 1 and above; an explicit fp32 at stage 0 is refused by the API."""
    if precision == "fp32" or requested == "precision":
        return None
    if requested == "fp32" or zero_stage >= 1:
        return "fp32"
    return None


def parameter_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups: with weight decay (matrices) and without (biases,
    norms: 1-D tensors)."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_steps(spec: FineTuneJobSpec, total_steps: int) -> int:
    return math.ceil(spec.hyperparameters.warmup_ratio * total_steps)


def create(spec: FineTuneJobSpec, model: Any, world: int, total_steps: int) -> Any:
    """deepspeed.initialize for the spec; returns the engine (its optimizer and scheduler inside)."""
    import deepspeed
    import torch
    from transformers import get_scheduler

    hp = spec.hyperparameters
    optimizer = torch.optim.AdamW(parameter_groups(model, hp.weight_decay), lr=hp.learning_rate, betas=(0.9, 0.999))

    def schedule(wrapped: Any) -> Any:
        return get_scheduler(
            SCHEDULERS[hp.scheduler],
            optimizer=wrapped,
            num_warmup_steps=warmup_steps(spec, total_steps),
            num_training_steps=total_steps,
        )

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=schedule,
        config=deepspeed_config(spec, world),
    )
    return engine
