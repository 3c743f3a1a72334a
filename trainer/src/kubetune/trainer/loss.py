"""The training loss of an optimizer step: every trained token of the step weighs the same.

The loss of a step is the sum over all its micro-batches and ranks of the token losses, divided by the
number of trained tokens (labels other than -100) in all of them. A mean per micro-batch, averaged over
accumulation steps and ranks, would not be: with chat masking a micro-batch with few assistant tokens
would weigh as much as one with many (the gradient-accumulation bug transformers fixed in 2024).

So the step first counts its trained tokens on every rank and all-reduces the count (`trained_tokens`,
cheap: from the labels, before any forward pass); then each micro-batch's *summed* token loss is scaled
before its backward by `backward_scale`. DeepSpeed's own averaging is taken into account: called with
`scale_wrt_gas=False`, `engine.backward` does not divide by the accumulation steps, and the gradient
reduction over data-parallel ranks divides by the world size (`allreduce_bucket`, ZeRO-1/2's
`gradient_reduction_w_predivide` and ZeRO-3's reduce-scatter all average). Scaling each micro-batch by
world / total tokens therefore yields exactly sum(token gradients) / total tokens.

`token_loss_sum` computes a micro-batch's summed loss. Where the model allows it, the LM head and the
loss are computed together per chunk of tokens (`chunked_loss`), so the full logits never exist: the
head's input is taken with a forward pre-hook that also hands the head an empty slice (the model still
runs through DeepSpeed's engine and every hook it installs). Elsewhere (a head with a bias or an
adapter, logit soft-capping or scaling, a router loss, ZeRO-3, whose partitioned head weight is only
whole inside the head's own forward) the model's own loss is asked for a sum (`num_items_in_batch=1`),
with logits only at the positions that predict a trained token.
"""

from __future__ import annotations

from collections.abc import Sequence as Sequences
from typing import Any

from kubetune.trainer.data import IGNORE_INDEX
from kubetune.trainer.packing import Sequence

#: Config attributes that change the logits after the head's matrix product (Gemma 2's soft-capping,
#: Granite's and Cohere's scaling): the chunked loss would not see them, so such models use the plain one.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logits_scaling", "logit_scale")
#: Config flags that add a term to the model's own loss (mixture-of-experts router losses).
EXTRA_LOSSES = ("output_router_logits",)


def trained_tokens(sequences: Sequences[Sequence]) -> int:
    """Tokens with a loss: labels other than -100 after the first position (position p predicts
    token p + 1, so the first token of a row is never predicted)."""
    return sum(sum(1 for label in s.labels[1:] if label != IGNORE_INDEX) for s in sequences)


def backward_scale(world: int, step_tokens: int) -> float:
    """What to multiply a micro-batch's summed token loss by before `engine.backward(...,
    scale_wrt_gas=False)`, given DeepSpeed's mean over `world` data-parallel ranks and the
    `step_tokens` trained tokens of the whole optimizer step (all micro-batches, all ranks).
    A step without any trained token contributes nothing (0)."""
    return world / step_tokens if step_tokens > 0 else 0.0


def chunked_head(model: Any, zero_stage: int) -> Any:
    """The LM head module when the chunked loss computes the same loss as the model; None otherwise."""
    import torch

    if zero_stage == 3:
        return None
    inner = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    config = getattr(inner, "config", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or config is None:
        return None
    if any(getattr(config, name, None) for name in LOGIT_TRANSFORMS + EXTRA_LOSSES):
        return None
    return head


def _targets(labels: Any) -> Any:
    """Per position, the label it predicts (-100 where none): labels shifted left by one."""
    import torch.nn.functional as F

    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def token_loss_sum(model: Any, batch: dict[str, Any], head: Any = None) -> Any:
    """The sum of the next-token cross-entropies of the labelled tokens of `batch` (input_ids, labels,
    attention_mask or position_ids), a scalar tensor to backward through. `head`: `chunked_head(...)`'s
    answer; None uses the model's own loss."""
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    targets = _targets(batch["labels"])
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    if positions.numel() == 0:  # every rank still runs a forward (ZeRO-3 gathers in it)
        positions = torch.zeros(1, dtype=torch.long, device=targets.device)
    kept = targets[:, positions]
    if head is None:
        output = model(**batch, logits_to_keep=positions, shift_labels=kept, num_items_in_batch=1, use_cache=False)
        return output.loss
    from kubetune.trainer.chunked_loss import linear_cross_entropy_sum

    captured: list[Any] = []

    def take_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        captured.append(args[0])
        return (args[0][:, :0],)  # the head projects nothing; the loss below does it per chunk

    hook = head.register_forward_pre_hook(take_input)
    try:
        model(**inputs, logits_to_keep=positions, use_cache=False)
    finally:
        hook.remove()
    scored = kept != IGNORE_INDEX
    return linear_cross_entropy_sum(captured[0][scored], head.weight, kept[scored])
