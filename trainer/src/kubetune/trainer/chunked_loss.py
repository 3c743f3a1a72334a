"""The LM head and the cross-entropy in one pass over chunks of tokens, never building all the logits.

A causal LM's loss projects every trained token onto the vocabulary: for SmolLM2's 49,152 tokens and
a micro-batch of 4 x 512 tokens that is 100 M logits, which transformers upcasts to fp32 (400 MB), then
holds again as log-probabilities and once more as their gradient. That is often the largest tensor of
the step and a real share of its time. Here the logits of `chunk` tokens at a time are computed, turned
into the loss and into their gradient (softmax minus one-hot, in fp32), and the gradient is pushed back
through the head at once (`grad_hidden = grad_logits @ W`, `grad_W += grad_logits.T @ hidden`), so only
one chunk of logits ever exists. This is what Liger Kernel's fused linear cross-entropy does; the same
three matrix products as the plain loss, no recomputation.

`linear_cross_entropy_sum(hidden, weight, targets)` is an autograd-friendly function: its backward hands
out the gradients computed in the forward, scaled by the incoming gradient (the loss is a scalar). It
returns the *sum* of the token losses (the caller decides the weighting), in fp32. Targets of -100 are
skipped. The weight's gradient is only computed when the weight requires one (LoRA freezes the head),
and tied embeddings need nothing special: the gradient reaches the one shared parameter through autograd.
"""

from __future__ import annotations

from typing import Any

import torch

from kubetune.trainer.data import IGNORE_INDEX

#: Logit elements per chunk: 32 M fp32 values (128 MB, reused in place as probabilities and their
#: gradient) keep a chunk small next to the whole micro-batch's logits while each chunk's matrix products
#: stay large (for a 49 k vocabulary: 682 tokens). Measured on a CPU (1,024 tokens x 576 x 49,152): 170-token
#: chunks took 6 % longer than 1,024-token ones, 64-token chunks 19 % longer.
CHUNK_ELEMENTS = 1 << 25


def chunk_tokens(vocabulary: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk for a vocabulary size: `elements` logits, at least 16 tokens."""
    return max(16, elements // max(1, vocabulary))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = hidden[start : start + chunk]
            wanted = targets[start : start + chunk]
            scored = wanted != IGNORE_INDEX
            safe = wanted.clamp(min=0)
            logits = (rows @ weight.t()).float()
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            # log-sum-exp and softmax in three passes over the chunk, in place: max, exp(x - max), sum.
            peak = logits.amax(dim=-1, keepdim=True)
            exponentials = logits.sub_(peak).exp_()
            sums = exponentials.sum(dim=-1)
            total += ((sums.log() + peak.squeeze(1) - picked) * scored).sum()
            if not (want_hidden or want_weight):
                continue
            # d loss / d logits = softmax - one-hot, for scored rows only.
            gradient = exponentials.mul_((scored / sums)[:, None])
            gradient[torch.arange(gradient.shape[0], device=gradient.device), safe] -= scored.to(gradient.dtype)
            # The products run in the weights' dtype (bf16 matrix units on a GPU); grad_weight sums in fp32.
            low = gradient.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = (low @ weight).to(hidden.dtype)
            if grad_weight is not None:
                if weight.dtype == torch.float32:
                    grad_weight.addmm_(low.t(), rows.float())
                else:
                    grad_weight.add_(low.t() @ rows.to(weight.dtype))
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        saved = list(ctx.saved_tensors)
        grad_hidden = saved.pop(0) * grad_output if ctx.has[0] else None
        grad_weight = (saved.pop(0) * grad_output).to(ctx.weight_dtype) if ctx.has[1] else None
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Sum over tokens of cross-entropy(hidden @ weight.T, targets), targets of -100 left out; fp32.

    hidden: (tokens, hidden size); weight: (vocabulary, hidden size), the LM head's (bias-free);
    targets: (tokens,). `chunk`: tokens per chunk (default: `chunk_tokens` of the vocabulary)."""
    size = chunk or chunk_tokens(weight.shape[0])
    result: torch.Tensor = _LinearCrossEntropy.apply(hidden, weight, targets, size)  # type: ignore[no-untyped-call]
    return result
