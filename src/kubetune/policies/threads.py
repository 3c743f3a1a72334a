"""How many compute threads each rank of a worker uses (OMP_NUM_THREADS), from the CPU it was given.

torch sizes its intra-op thread pool by the machine's cores, not by the container's share of them: two
one-rank workers with 400m of CPU each on a 2-core node ran 4 compute threads on 2 cores, and gloo's
communication threads waited behind them. Measured on the real node (docs/benchmarks.md, section 5), the
first optimizer step took 23 s and later steps 7 s, against 8.5 s and 5 s for the same two ranks with one
thread each under `kubetune run`. torchrun sets 1 only when a worker runs several processes, and nothing
when it runs one.

So every rank gets the worker's CPU divided among its processes, rounded down, at least 1: the CPU
limit when there is one (the cgroup enforces it), else the request (what the scheduler reserved; a
burstable pod may get more, but cannot count on it), else the machine's cores (`kubetune run`).

A GPU worker whose CPU nobody stated gets no setting at all (None): its compute runs on the GPU, and
what does run on its CPU — DeepSpeed's CPU Adam under `offloadOptimizer`, the data loader's
tokenization — would crawl on the one thread that the operator's default request of one core would
give it. There the launcher's choice stands, as before: torch's default of every core for a worker of one
process, and torchrun's 1 per process for a worker of several (state the pod's CPU to give them more).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from kubetune.api.kubernetes_syntax import parse_quantity

ENV = "OMP_NUM_THREADS"


def threads_per_process(
    processes: int, limits: Mapping[str, object] | None, requests: Mapping[str, object] | None, cores: int | None
) -> int | None:
    """OMP_NUM_THREADS for each of a worker's `processes`: its CPU (limit, else request, else `cores`)
    divided among them, rounded down, at least 1; None (leave torch's default) when none is known."""
    for quantities in (limits, requests):
        cpu = parse_quantity(str(quantities["cpu"])) if quantities and "cpu" in quantities else None
        if cpu is not None:
            return max(1, math.floor(float(cpu) / processes))
    return max(1, cores // processes) if cores else None
