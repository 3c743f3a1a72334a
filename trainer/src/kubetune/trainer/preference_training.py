"""The DPO side of the training loop: reference log-probabilities, each micro-batch's loss, and scoring.

`Trainer` (kubetune.trainer.loop) runs the same steps, evaluations, checkpoints and export for DPO as for
supervised fine-tuning; only what a micro-batch's loss is and how a held-out set is scored differ, and
they live here (the math in kubetune.trainer.preference).

Weighting: every pair of an optimizer step weighs the same, across micro-batches and ranks — the pair is
DPO's unit as the token is the supervised loss's (kubetune.trainer.loss: the step counts its pairs first,
then scales each micro-batch's summed loss by world / pairs).

Reference log-probabilities (`method.dpo.reference`):
- `precomputed`: before the first step every rank scores a strided share of the train, validation and
  test pairs with the starting weights in eval mode; one all-reduce puts them together; they are kept in
  `RunState.reference_log_probs`, so every checkpoint carries them and a resumed attempt (whose weights have
  moved) reads them back instead of computing them again. Each set is kept under its name and a digest of
  its pairs (`train@<sha256>`): pairs that changed since, even as many, are found and the resume refused.
- `live` (LoRA): each batch's reference is the same model with its adapters disabled, without gradients.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from typing import Any, cast

from kubetune.api.status import EvaluationResult, PreferenceFigures
from kubetune.api.training import DpoSpec
from kubetune.trainer import distributed
from kubetune.trainer.dataset import HeldOut, PreparedData
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.evaluation import EvaluationSettings, GenerationTotals, exact_match_count, padding_id, shard
from kubetune.trainer.preference import Pair, PreferenceTotals, dpo_loss, pair_log_probs, totals_of

#: Names of the sets whose reference log-probabilities are kept.
TRAIN, VALIDATION, TEST = "train", "validation", "test"


class PreferenceTraining:
    """DPO for one rank's run: call `prepare_reference` once after resuming, then `micro_batch_loss` per
    micro-batch and `score` per evaluation."""

    def __init__(self, spec: DpoSpec, engine: Any, tokenizer: Any, data: PreparedData, rank: distributed.Rank) -> None:
        self.spec, self.engine, self.data, self.rank = spec, engine, data, rank
        self.pad_id = padding_id(tokenizer)
        self.tokenizer = tokenizer
        self.reference: dict[str, list[list[float]]] = {}
        """Per set, each pair's [chosen, rejected] reference log-probability (precomputed)."""
        self.step_totals = PreferenceTotals()
        """This rank's sums over the current optimizer step's pairs (reset by `take_step_totals`)."""

    # ----- reference ---------------------------------------------------------------------------------

    def sets(self) -> dict[str, list[Pair]]:
        held = {TRAIN: self.data.sequences, VALIDATION: self.data.validation}
        if self.data.test is not None:
            held[TEST] = self.data.test.examples
        return {name: list(pairs) for name, pairs in held.items()}  # type: ignore[arg-type]

    def prepare_reference(
        self, saved: dict[str, list[list[float]]] | None, batch_size: int, resumed_step: int = 0
    ) -> dict[str, Any]:
        """The reference log-probabilities: `saved` (from the checkpoint) when it has every set, else
        computed now by the weights as they are — only before the first step, when they are the reference
        (at `resumed_step` > 0 the weights have moved, and scoring them would make the policy its own
        reference: refused with a ConfigError naming what differs). With `reference: live` nothing is
        kept. Returns what the checkpoint should keep."""
        if self.spec.reference == "live":
            return {}
        sets = self.sets()
        keys = {name: f"{name}@{pairs_digest(pairs)}" for name, pairs in sets.items()}
        kept = {name: _kept(saved or {}, name, keys[name], len(pairs)) for name, pairs in sets.items()}
        mismatched = {
            name: (len(values or _saved_under(saved or {}, name)), len(sets[name]))
            for name, values in kept.items()
            if values is None
        }
        if not mismatched:
            self.reference = cast(dict[str, list[list[float]]], kept)
        elif resumed_step > 0:
            raise ConfigError(reference_mismatch(mismatched, resumed_step, kept_any=bool(saved)))
        else:
            self.reference = {name: self._score_all(pairs, batch_size) for name, pairs in sets.items()}
        return {keys[name]: values for name, values in self.reference.items()}

    def _score_all(self, pairs: list[Pair], batch_size: int) -> list[list[float]]:
        """[chosen, rejected] log-probabilities of every pair under the model as it is, in eval mode; each
        rank scores its strided share and one all-reduce adds the shares (zeros elsewhere)."""
        import torch

        module = self.engine.module
        values = [0.0] * (2 * len(pairs))
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for batch in shard(list(range(len(pairs))), self.rank.rank, self.rank.world, batch_size):
                    chosen, rejected = pair_log_probs(
                        module, [pairs[i] for i, _ in batch], self.pad_id, self.rank.device
                    )
                    for (index, weight), c, r in zip(batch, chosen.tolist(), rejected.tolist(), strict=True):
                        if weight > 0:
                            values[2 * index], values[2 * index + 1] = c, r
        finally:
            module.train(was_training)
        summed = distributed.all_reduce_sum(values, self.rank.device)
        return [[summed[2 * i], summed[2 * i + 1]] for i in range(len(pairs))]

    def _reference_of(self, name: str, indexes: list[int], pairs: list[Pair]) -> tuple[Any, Any]:
        import torch

        if self.spec.reference == "live":
            module = self.engine.module
            with torch.no_grad(), _adapters_disabled(module):
                chosen, rejected = pair_log_probs(module, pairs, self.pad_id, self.rank.device)
            return chosen.detach(), rejected.detach()
        kept = [self.reference[name][i] for i in indexes]
        values = torch.tensor(kept, dtype=torch.float32, device=self.rank.device)
        return values[:, 0], values[:, 1]

    # ----- training ----------------------------------------------------------------------------------

    def micro_batch_loss(self, indexes: list[int]) -> Any:
        """The summed DPO loss of the training pairs at `indexes` (a scalar to backward through); its
        figures are added to `step_totals`."""
        pairs = [self.data.sequences[i] for i in indexes]
        policy = pair_log_probs(self.engine, pairs, self.pad_id, self.rank.device)  # type: ignore[arg-type]
        reference = self._reference_of(TRAIN, indexes, pairs)  # type: ignore[arg-type]
        result = dpo_loss(*policy, *reference, self.spec.beta, self.spec.label_smoothing)
        detached = (policy[0].detach(), policy[1].detach())
        self.step_totals = self.step_totals.plus(totals_of(result, detached, reference))
        return result.losses.sum()

    def take_step_totals(self) -> list[float]:
        """This rank's sums of the step just run (to all-reduce with the step's other figures)."""
        vector, self.step_totals = self.step_totals.vector(), PreferenceTotals()
        return vector

    # ----- scoring -----------------------------------------------------------------------------------

    def score(self, held: HeldOut, name: str, settings: EvaluationSettings) -> EvaluationResult:
        """The policy's DPO figures on `held`, the set called `name` (the first `max_examples` pairs; all
        ranks), and exact match of its chosen answers when `settings` asks."""
        import torch

        pairs = cast(list[Pair], list(held.examples))[: settings.max_examples]
        module = self.engine.module
        totals = PreferenceTotals()
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for batch in shard(list(range(len(pairs))), self.rank.rank, self.rank.world, settings.batch_size):
                    indexes = [i for i, _ in batch]
                    chosen = [pairs[i] for i in indexes]
                    policy = pair_log_probs(module, chosen, self.pad_id, self.rank.device)
                    reference = self._reference_of(name, indexes, chosen)
                    losses = dpo_loss(*policy, *reference, self.spec.beta, self.spec.label_smoothing)
                    weights = torch.tensor([w for _, w in batch], device=self.rank.device)
                    totals = totals.plus(totals_of(losses, policy, reference, weights))
                generated = GenerationTotals()
                if settings.exact_match and held.cases:
                    cases = held.cases[: settings.max_examples]
                    generated = exact_match_count(module, self.tokenizer, cases, settings, self.rank)
        finally:
            module.train(was_training)
        g = generated
        summed = distributed.all_reduce_sum(
            [*totals.vector(), g.matched, g.scored, g.seconds, g.tokens], self.rank.device
        )
        figures = PreferenceTotals(*summed[:-4]).figures()
        matched, scored, seconds, new_tokens = summed[-4:]
        loss = figures["eval_loss"]
        result = EvaluationResult(
            **figures,
            perplexity=None,
            exact_match=matched / scored if scored else None,
            examples=len(pairs),
            latency_seconds=seconds / scored if scored else None,
            tokens_per_second=new_tokens / seconds if seconds else None,
        )
        if loss is None or not math.isfinite(loss):
            result = result.model_copy(update={"eval_loss": math.nan if loss is None else loss})
        return result


def pairs_digest(pairs: list[Pair]) -> str:
    """What a set's reference values belong to: its pairs' tokens and answer masks, in order (SHA-256)."""
    digest = hashlib.sha256()
    for pair in pairs:
        for example in (pair.chosen, pair.rejected):
            digest.update(json.dumps([example.input_ids, example.labels]).encode())
    return digest.hexdigest()[:16]


def _saved_under(saved: dict[str, list[list[float]]], name: str) -> list[list[float]]:
    """A set's kept values, whichever pairs they were for."""
    return next((values for key, values in saved.items() if key.split("@")[0] == name), [])


def _kept(saved: dict[str, list[list[float]]], name: str, key: str, count: int) -> list[list[float]] | None:
    """A set's kept values when they belong to its pairs now: saved under its digest, or (a checkpoint from
    before digests were kept) under its bare name, for as many pairs. None when they do not."""
    values = saved.get(key)
    if values is None and name in saved and len(saved[name]) == count:
        values = saved[name]
    return values


def reference_mismatch(mismatched: dict[str, tuple[int, int]], step: int, kept_any: bool = True) -> str:
    """Why a resumed DPO run cannot go on: its checkpoint's reference log-probabilities do not match the
    pairs (per set: how many were kept, how many there are now); `kept_any`: the checkpoint keeps some."""
    if not kept_any:
        return (
            f"the checkpoint at step {step} keeps no reference log-probabilities (was the run started with "
            "`method.dpo.reference: live`?), and the weights have moved, so they can no longer be the "
            "reference. Go on with `reference: live`, or start a new run (a new storage.output or checkpoint "
            "folder)"
        )
    differences = ", ".join(
        f"{name}: {now} pairs, not the ones kept" if kept == now else f"{name}: {kept} kept, {now} now"
        for name, (kept, now) in mismatched.items()
    )
    return (
        f"the checkpoint at step {step} keeps the starting model's reference log-probabilities for other "
        f"preference pairs than the data has now ({differences}); the dataset files changed since the "
        "checkpoint was written, and the weights have moved, so they can no longer be the reference. "
        "Restore the files the run started with, or start a new run (a new storage.output or checkpoint "
        "folder) with the new data"
    )


def figures_of(vector: list[float]) -> PreferenceFigures:
    """The reward figures of summed PreferenceTotals (a step's, all ranks)."""
    figures = PreferenceTotals(*vector).figures()
    return PreferenceFigures(
        reward_accuracy=figures["reward_accuracy"],
        reward_margin=figures["reward_margin"],
        chosen_reward=figures["chosen_reward"],
        rejected_reward=figures["rejected_reward"],
    )


def result_figures(result: EvaluationResult) -> PreferenceFigures:
    return PreferenceFigures(
        reward_accuracy=result.reward_accuracy,
        reward_margin=result.reward_margin,
        chosen_reward=result.chosen_reward,
        rejected_reward=result.rejected_reward,
    )


def _adapters_disabled(module: Any) -> Any:
    """peft's context that runs the base weights alone (the LoRA reference); a no-op without adapters."""
    inner = getattr(module, "module", module)
    return inner.disable_adapter() if hasattr(inner, "disable_adapter") else contextlib.nullcontext()
