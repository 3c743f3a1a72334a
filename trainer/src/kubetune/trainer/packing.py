"""Which examples each rank sees at each step, packed or padded into tensors.

The order is a pure function of (seed, epoch, step, rank): every epoch is a seeded permutation of the
training sequences, cut into global batches of `world x microBatchSize x gradientAccumulationSteps`,
the last incomplete one dropped (ranks must run the same number of forward passes). A resumed run
therefore needs only its optimizer step to continue exactly where the interrupted one stopped: no
example is seen twice and none is skipped.

Packing (dataset.packing) fills sequences of up to maxSeqLength tokens with consecutive examples
(greedily, in file order, so packs are identical on every rank and every attempt). Isolation is exact:
position ids restart at 0 for each example and no attention mask is passed, which makes transformers
build a block-diagonal causal mask from the position ids (`find_packed_sequence_indices`); and the
first token of every example gets label -100, so no loss term predicts one example from another.
Padding is right-aligned with label -100 (and attention mask 0 when not packing).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kubetune.trainer.data import IGNORE_INDEX, Example


@dataclass(frozen=True)
class Sequence:
    """One row of a micro-batch: a single example, or several packed."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    example_ids: tuple[int, ...]
    """Indexes of the examples it holds (positions in the training set)."""


def single(example: Example, index: int) -> Sequence:
    return Sequence(example.input_ids, example.labels, list(range(len(example.input_ids))), (index,))


def pack(examples: list[Example], max_length: int) -> list[Sequence]:
    """Greedy packing in order; each pack holds whole examples only and at most `max_length` tokens."""
    packs: list[Sequence] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    members: list[int] = []
    for index, example in enumerate(examples):
        if ids and len(ids) + len(example.input_ids) > max_length:
            packs.append(Sequence(ids, labels, positions, tuple(members)))
            ids, labels, positions, members = [], [], [], []
        ids = ids + example.input_ids
        labels = [*labels, IGNORE_INDEX, *example.labels[1:]]
        positions = positions + list(range(len(example.input_ids)))
        members.append(index)
    if ids:
        packs.append(Sequence(ids, labels, positions, tuple(members)))
    return packs


def build_sequences(examples: list[Example], packing: bool, max_length: int) -> list[Sequence]:
    return pack(examples, max_length) if packing else [single(e, i) for i, e in enumerate(examples)]


@dataclass(frozen=True)
class BatchPlan:
    """The data order of a run. All fields are counts; `seed` is hyperparameters.seed."""

    items: int
    """Training sequences (examples, or packs when packing)."""
    world: int
    """Processes in the gang."""
    micro_batch: int
    accumulation: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.world * self.micro_batch * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        return self.items // self.global_batch

    def total_steps(self, epochs: int, max_steps: int | None) -> int:
        planned = epochs * self.steps_per_epoch
        return min(planned, max_steps) if max_steps else planned

    def order(self, epoch: int) -> list[int]:
        """The seeded permutation of sequence indexes for `epoch` (0-based)."""
        return _permutation(self.items, self.seed, epoch)

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """Sequence indexes of each micro-batch `rank` runs for optimizer step `step` (0-based)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        chunk = self.order(epoch)[index * self.global_batch : (index + 1) * self.global_batch]
        per_micro = self.world * self.micro_batch
        return [
            chunk[k * per_micro + rank * self.micro_batch : k * per_micro + (rank + 1) * self.micro_batch]
            for k in range(self.accumulation)
        ]

    def epoch_at(self, step: int) -> float:
        """Fractional epochs completed after `step` optimizer steps."""
        return step / self.steps_per_epoch if self.steps_per_epoch else 0.0


@lru_cache(maxsize=4)
def _permutation(items: int, seed: int, epoch: int) -> list[int]:
    # Python's Mersenne Twister and shuffle are stable across versions and platforms; the order must
    # not depend on torch's generator, which the training RNG state also drives.
    order = list(range(items))
    random.Random(f"kubetune-data-{seed}-{epoch}").shuffle(order)
    return order


def collate(sequences: list[Sequence], pad_id: int, packed: bool) -> dict[str, Any]:
    """Right-padded tensors for one micro-batch: input_ids, labels, and position_ids (packed) or
    attention_mask (not packed)."""
    import torch

    width = max(len(s.input_ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
    if packed:
        positions = torch.zeros((len(sequences), width), dtype=torch.long)
        batch["position_ids"] = positions
    else:
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        batch["attention_mask"] = mask
    for row, sequence in enumerate(sequences):
        length = len(sequence.input_ids)
        input_ids[row, :length] = torch.tensor(sequence.input_ids)
        labels[row, :length] = torch.tensor(sequence.labels)
        if packed:
            positions[row, :length] = torch.tensor(sequence.position_ids)
            # The padding forms its own segment (positions restart), so no real token attends to it.
            positions[row, length:] = torch.arange(width - length)
        else:
            mask[row, :length] = 1
    return batch


def token_count(sequences: list[Sequence]) -> int:
    """Non-padding tokens in the sequences."""
    return sum(len(s.input_ids) for s in sequences)
