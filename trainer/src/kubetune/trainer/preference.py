"""Preference tuning (DPO): chosen/rejected pairs, their log-probabilities, the loss and its figures.

Direct Preference Optimization (Rafailov et al., 2023) trains the policy pi to rank each pair's chosen
answer above its rejected one, relative to a reference model (the starting weights):

    reward(y)  = beta * (log pi(y | x) - log ref(y | x))          (summed over the answer's tokens)
    margin     = reward(chosen) - reward(rejected)
    loss       = -(1 - eps) * log sigmoid(margin) - eps * log sigmoid(-margin)

`eps` is label smoothing (conservative DPO: eps of the labels are assumed flipped); eps = 0 is the
paper's loss. This is TRL's `sigmoid` loss (`DPOTrainer.dpo_loss`), written out here because TRL's
function is a method of its Trainer, which kubetune's DeepSpeed loop does not use; the unit test
checks it against the formula computed independently.

A log-probability is the sum over the answer's tokens (labels other than -100) of log softmax of the
logits at the position before each token, as TRL computes it. Reward accuracy is the fraction of pairs
whose margin is positive; preference accuracy (of any model, the reference included) the fraction whose
chosen answer has the higher log-probability.

The reference log-probabilities are, by default, computed once before the first step by the model as
loaded — which is exactly the reference — and kept in every checkpoint (`reference: precomputed`): the
same numbers a frozen copy would give at each step, without a second model in memory. With LoRA,
`reference: live` computes them at each step with the adapters disabled (the same weights, no copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.trainer.data import IGNORE_INDEX, Dropped, Example


@dataclass(frozen=True)
class Pair:
    """One preference pair: the prompt with its chosen answer and with its rejected one (each a tokenized
    example whose labels are the answer's tokens only)."""

    chosen: Example
    rejected: Example

    # What the data report counts of an example, counted over both answers.
    @property
    def input_ids(self) -> list[int]:
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def labels(self) -> list[int]:
        return self.chosen.labels + self.rejected.labels

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated

    @property
    def full_length(self) -> int:
        return max(self.chosen.full_length, self.rejected.full_length)


def pair_or_dropped(chosen: Example | Dropped, rejected: Example | Dropped) -> Pair | Dropped:
    """The pair, or the first side's reason when either answer has no token left to learn."""
    if isinstance(chosen, Dropped):
        return chosen
    if isinstance(rejected, Dropped):
        return rejected
    return Pair(chosen, rejected)


@dataclass(frozen=True)
class DpoLoss:
    """Per-pair tensors of one batch."""

    losses: Any
    chosen_rewards: Any
    rejected_rewards: Any


def dpo_loss(
    policy_chosen: Any, policy_rejected: Any, reference_chosen: Any, reference_rejected: Any, beta: float, eps: float
) -> DpoLoss:
    """The sigmoid DPO loss with label smoothing `eps`, per pair (tensors of shape [pairs])."""
    import torch.nn.functional as F

    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    margin = chosen_rewards - rejected_rewards
    losses = -(1 - eps) * F.logsigmoid(margin) - eps * F.logsigmoid(-margin)
    return DpoLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def answer_log_probs(model: Any, batch: dict[str, Any]) -> Any:
    """Summed log-probability of each row's labelled tokens (shape [rows]); logits are computed only at the
    positions that predict a labelled token of some row (`logits_to_keep`), as the evaluation does."""
    import torch
    import torch.nn.functional as F

    labels = batch["labels"]
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # position p predicts token p + 1
    wanted = (targets != IGNORE_INDEX).any(dim=0)
    positions = wanted.nonzero().flatten() if bool(wanted.any()) else torch.zeros(1, dtype=torch.long)
    positions = positions.to(labels.device)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits.float()
    kept = targets[:, positions]
    scored = kept != IGNORE_INDEX
    token_log_probs = F.log_softmax(logits, dim=-1).gather(-1, kept.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * scored).sum(dim=-1)


def pair_batch(pairs: list[Pair], pad_id: int) -> dict[str, Any]:
    """One padded batch of 2 x len(pairs) rows: every chosen answer, then every rejected one."""
    from kubetune.trainer.packing import collate, single

    rows = [single(p.chosen, 0) for p in pairs] + [single(p.rejected, 0) for p in pairs]
    return collate(rows, pad_id, packed=False)


def pair_log_probs(model: Any, pairs: list[Pair], pad_id: int, device: Any) -> tuple[Any, Any]:
    """(chosen, rejected) summed answer log-probabilities of `pairs` under `model`, one forward pass."""
    batch = {k: v.to(device) for k, v in pair_batch(pairs, pad_id).items()}
    both = answer_log_probs(model, batch)
    return both[: len(pairs)], both[len(pairs) :]


@dataclass(frozen=True)
class PreferenceTotals:
    """Sums over pairs (add them across ranks, then divide by `pairs`)."""

    pairs: float = 0.0
    loss: float = 0.0
    reward_correct: float = 0.0
    """Pairs whose chosen reward beats the rejected one."""
    margin: float = 0.0
    chosen_reward: float = 0.0
    rejected_reward: float = 0.0
    policy_correct: float = 0.0
    """Pairs the policy's log-probability ranks right (preference accuracy)."""

    def vector(self) -> list[float]:
        return [
            self.pairs,
            self.loss,
            self.reward_correct,
            self.margin,
            self.chosen_reward,
            self.rejected_reward,
            self.policy_correct,
        ]

    def plus(self, other: PreferenceTotals) -> PreferenceTotals:
        return PreferenceTotals(*(a + b for a, b in zip(self.vector(), other.vector(), strict=True)))

    def figures(self) -> dict[str, float | None]:
        """Means per pair, keyed as EvaluationResult's fields (None without pairs)."""
        count = self.pairs

        def mean(value: float) -> float | None:
            return value / count if count else None

        return {
            "eval_loss": mean(self.loss),
            "reward_accuracy": mean(self.reward_correct),
            "reward_margin": mean(self.margin),
            "chosen_reward": mean(self.chosen_reward),
            "rejected_reward": mean(self.rejected_reward),
            "preference_accuracy": mean(self.policy_correct),
        }


def totals_of(
    result: DpoLoss,
    policy: tuple[Any, Any],
    reference: tuple[Any, Any],
    weights: Any | None = None,
) -> PreferenceTotals:
    """The sums of one batch; `weights` (0 or 1 per pair) leaves out the repeats that even out the ranks."""
    import torch

    weight = weights if weights is not None else torch.ones_like(result.losses)
    margin = result.chosen_rewards - result.rejected_rewards
    return PreferenceTotals(
        pairs=float(weight.sum()),
        loss=float((result.losses.detach() * weight).sum()),
        reward_correct=float(((margin > 0).float() * weight).sum()),
        margin=float((margin * weight).sum()),
        chosen_reward=float((result.chosen_rewards * weight).sum()),
        rejected_reward=float((result.rejected_rewards * weight).sum()),
        policy_correct=float(((policy[0] > policy[1]).float() * weight).sum()),
    )


def tokenize_pair(record: Any, tokenizer: Any, max_seq_length: int) -> Pair | Dropped:
    """A preference record's pair: its prompt answered with `chosen` and with `rejected`, each tokenized as
    the supervised format the prompt implies (answer tokens scored only), truncated to `max_seq_length`."""
    from kubetune.trainer.data import as_supervised, tokenize_or_explain

    sides = []
    for side in ("chosen", "rejected"):
        supervised, fmt = as_supervised(record, side)
        sides.append(tokenize_or_explain(supervised, fmt, tokenizer, max_seq_length, train_on_inputs=False))
    return pair_or_dropped(*sides)
