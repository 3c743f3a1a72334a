"""The LM head and the loss alone: the plain loss (all logits, as transformers computes it) against
kubetune's chunked one, same tokens, same box, one process each.

The trainer comparison measures whole runs, where the head and the loss are one part among many and a
shared machine's load blurs small differences. This isolates them: forward and backward of
`hidden @ W.T` then the summed cross-entropy over `tokens` tokens, timed (median of the repetitions)
and with the peak memory it adds. Memory on the CPU is the process's peak resident set (VmHWM), reset
through /proc/self/clear_refs just before the measured call, minus the resident set then; each variant
runs in its own fresh process so that neither inherits the other's freed pages.

    python -m bench.loss_head [--tokens 1024] [--hidden 576] [--vocab 49152]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("plain", "chunked")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run_variant(variant: str, tokens: int, hidden: int, vocab: int, repetitions: int) -> dict[str, Any]:
    """Time and peak memory of one variant in this process (call in a fresh one)."""
    import torch
    import torch.nn.functional as F

    from kubetune.trainer.chunked_loss import linear_cross_entropy_sum

    torch.manual_seed(0)
    states = torch.randn(tokens, hidden, requires_grad=True)
    weight = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,))

    def once() -> None:
        if variant == "plain":
            logits = (states @ weight.t()).float()
            loss = F.cross_entropy(logits, targets, reduction="sum")
        else:
            loss = linear_cross_entropy_sum(states, weight, targets)
        loss.backward()  # type: ignore[no-untyped-call]
        states.grad, weight.grad = None, None

    once()  # warm-up: allocator, kernels
    times = []
    for _ in range(repetitions):
        began = time.perf_counter()
        once()
        times.append(time.perf_counter() - began)
    resident = _status_bytes("VmRSS")
    peak = None
    if _reset_peak():
        once()
        peak = _status_bytes("VmHWM") - resident
    return {"seconds": sorted(times)[len(times) // 2], "peak_added_bytes": peak}


def measure(tokens: int = 1024, hidden: int = 576, vocab: int = 49_152, repetitions: int = 5) -> dict[str, Any]:
    """Both variants, each in a fresh single-threaded process."""
    results: dict[str, Any] = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "repetitions": repetitions}
    for variant in VARIANTS:
        command = [sys.executable, "-m", "bench.loss_head", f"--variant={variant}", f"--tokens={tokens}"]
        command += [f"--hidden={hidden}", f"--vocab={vocab}", f"--repetitions={repetitions}"]
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the trainers run (one thread per rank)
        output = subprocess.run(
            command, env=environment, capture_output=True, text=True, check=True, timeout=600
        ).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, help="measure one variant here (else both, in subprocesses)")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49_152)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    if args.variant:
        result = run_variant(args.variant, args.tokens, args.hidden, args.vocab, args.repetitions)
    else:
        result = measure(args.tokens, args.hidden, args.vocab, args.repetitions)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
