"""One rank per process, under any launcher that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT (torchrun, the operator's pods, the local runner).

Started without a launcher, the trainer is a gang of one. On CPU (`distributed.accelerator: cpu`)
DeepSpeed must be told before it is imported (`DS_ACCELERATOR=cpu`) and the backend is gloo; on GPUs it
is NCCL. Ranks agree on everything that changes control flow (a stop signal, a non-finite loss) through
one small all-reduce per optimizer step, so they always leave the loop at the same step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from kubetune.api.invocation import accelerator_environment, free_port

#: How long a collective may wait for the slowest rank before the run fails as PeerLost, in seconds.
#: Generous: the first evaluation with generation, or a large checkpoint, keeps some ranks waiting.
TIMEOUT_ENV = "KUBETUNE_COLLECTIVE_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Rank:
    """This process's place in the gang."""

    rank: int
    world: int
    local_rank: int
    device: Any
    """The torch.device this rank computes on."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def prepare_environment(accelerator: str) -> None:
    """Environment DeepSpeed and torch.distributed read, set before either is imported."""
    # Supervisors pass these already (TrainerInvocation.env); a rank started by hand gets them here.
    for name, value in accelerator_environment(accelerator).items():
        os.environ.setdefault(name, value)
    if "WORLD_SIZE" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))


def initialize(accelerator: str) -> Rank:
    """Join the process group (gloo on CPU, NCCL on GPUs) and pick this rank's device."""
    import deepspeed
    import torch

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accelerator == "cpu":
        device = torch.device("cpu")
    else:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    timeout = timedelta(seconds=int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS)))
    deepspeed.init_distributed(dist_backend="gloo" if accelerator == "cpu" else "nccl", timeout=timeout)
    return Rank(
        rank=torch.distributed.get_rank(),
        world=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=device,
    )


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: Any) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    result: list[float] = tensor.tolist()
    return result


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object; a small one: it travels pickled)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    carrier = [value]
    dist.broadcast_object_list(carrier, src=0)
    return carrier[0]


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank (small picklable objects)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def numel(parameter: Any) -> int:
    """A parameter's full element count. Under ZeRO-3 DeepSpeed partitions parameters and leaves an empty
    placeholder on every rank (`numel()` is 0); the full size is in its partition metadata, `ds_numel`."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def local_main_first(rank: Rank) -> Iterator[None]:
    """Local rank 0 runs the block first (filling shared caches such as datasets'), then the others."""
    if rank.local_rank != 0:
        barrier()
    try:
        yield
    finally:
        # Also on an error: the others then run the block themselves and fail the same way, instead of
        # waiting for the collective timeout.
        if rank.local_rank == 0:
            barrier()
