"""What both trainers train on: a Llama built from a config, two datasets and one FineTuneJob manifest.

Nothing is downloaded: the tokenizer is the tests' byte-level BPE (tests/support/tiny.py), the model a
Llama with random weights at the size a profile asks for, and the data random word sequences from the
tests' word list. Random weights train exactly as fast as pre-trained ones, which is all a throughput
benchmark needs.

The two datasets are the two cases the issue names:

- `uniform`: `text` examples all cut to exactly maxSeqLength tokens, so padding wastes nothing and the
  comparison measures the training step itself;
- `chat`: `chat` examples whose lengths follow a long-tailed (log-normal) distribution, as real
  conversation data does, so padding to the longest example of a micro-batch wastes much of each
  batch; kubetune packs them (dataset.packing), the baseline pads them as a typical user would.

The CPU and GPU runs use the same code with a different `Profile`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support import tiny
from tests.support.builders import a_job, deep_merge

DATASETS = ("uniform", "chat")
#: Tokens per random word in a chat turn with the tests' tokenizer (measured: 9,300 tokens for 6,008
#: words, scaffolding excluded); turns a target length in tokens into a word count.
CHAT_TOKENS_PER_WORD = 1.55
#: Tokens the ChatML scaffolding and the system prompt add to a conversation (measured: about 15).
CHAT_SCAFFOLD_TOKENS = 15


@dataclass(frozen=True)
class ModelSize:
    """A Llama's shape. Counts; `vocab` None = the tokenizer's own size (about 400)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int | None = None
    tie_embeddings: bool = True
    kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None = `heads`."""


@dataclass(frozen=True)
class Profile:
    """One benchmark setting: model, sequence length, batch shape, precision and how long to run."""

    name: str
    model: ModelSize
    seq_length: int
    """maxSeqLength, in tokens (the uniform examples' exact length, the chat examples' upper bound)."""
    micro_batch: int
    accumulation: int
    steps: int
    """Optimizer steps per run, warm-up included."""
    warmup_steps: int
    """Leading steps left out of every figure (start-up, allocator and cache warm-up)."""
    repetitions: int
    """Runs of each trainer per dataset, alternating kubetune / baseline."""
    precision: str = "fp32"
    accelerator: str = "cpu"
    processes: int = 2
    zero_stage: int = 2
    chat_median_tokens: int = 96
    """Median length of a chat example, in tokens (log-normal, sigma `chat_sigma`)."""
    chat_sigma: float = 0.8
    datasets: tuple[str, ...] = DATASETS
    extra_spec: dict[str, Any] = field(default_factory=dict)
    """Merged into every manifest's spec (e.g. checkpointing for the overheads run)."""

    @property
    def global_batch(self) -> int:
        return self.processes * self.micro_batch * self.accumulation


#: `make bench` on the project's 2-core machines: a ~1 M-parameter Llama, two processes, fp32.
CPU = Profile(
    name="cpu",
    model=ModelSize(hidden=128, layers=4, heads=4, intermediate=352),
    seq_length=512,
    micro_batch=4,
    accumulation=2,
    steps=25,
    warmup_steps=5,
    repetitions=3,
    chat_median_tokens=64,
    chat_sigma=0.9,
)

#: Seconds-long smoke run of every code path (tests, `python -m bench --quick`).
QUICK = Profile(
    name="quick",
    model=ModelSize(hidden=32, layers=1, heads=2, intermediate=64),
    seq_length=64,
    micro_batch=2,
    accumulation=1,
    steps=6,
    warmup_steps=2,
    repetitions=1,
    chat_median_tokens=24,
)

#: bench/gpu.sh on one H100: a 0.9 B Llama (Llama-style shapes, 32k vocabulary), bf16, 2048 tokens.
GPU = Profile(
    name="gpu",
    model=ModelSize(hidden=2048, layers=16, heads=16, intermediate=5632, vocab=32000, tie_embeddings=True),
    seq_length=2048,
    micro_batch=4,
    accumulation=4,
    steps=25,
    warmup_steps=5,
    repetitions=2,
    precision="bf16",
    accelerator="nvidia-gpu",
    processes=1,
    chat_median_tokens=600,
    chat_sigma=0.9,
    datasets=("uniform",),
)

#: A real small LLM's shape on the CPU: SmolLM2-135M's config (hidden 576, 30 layers, 9 heads of which 3
#: key/value, MLP 1536, a tied 49,152-token vocabulary), random weights, 512 tokens. Here the LM head and
#: the loss are a real share of the work (the head alone is a fifth of the matrix multiplies) and the
#: logits the largest tensors. A step of 2 x 1,024 tokens takes seconds on two cores: few steps, medians.
SMOL = Profile(
    name="smol",
    model=ModelSize(hidden=576, layers=30, heads=9, intermediate=1536, vocab=49_152, kv_heads=3),
    seq_length=512,
    micro_batch=2,
    accumulation=1,
    steps=5,
    warmup_steps=2,
    repetitions=2,
    datasets=("uniform",),
)

PROFILES = {p.name: p for p in (CPU, QUICK, GPU, SMOL)}


def build_model(directory: Path, size: ModelSize, dtype: str = "float32", seed: int = 0) -> Path:
    """The tests' tokenizer plus a randomly initialised Llama of `size`, saved into `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny.build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=size.vocab or len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads or size.heads,
        max_position_embeddings=8192,
        tie_word_embeddings=size.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(tiny.IM_END)],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(directory)
    return directory


def _words(rng: random.Random, count: int) -> str:
    """`count` random words: one token each with the tests' tokenizer (plus the odd merge)."""
    return " ".join(rng.choice(tiny.WORDS) for _ in range(count))


def uniform_records(count: int, seq_length: int, seed: int = 0) -> list[dict[str, Any]]:
    """`text` examples longer than `seq_length` tokens (truncation makes them exactly that long)."""
    rng = random.Random(f"uniform-{seed}")
    return [{"text": _words(rng, seq_length + 8)} for _ in range(count)]


def chat_lengths(count: int, median: int, sigma: float, upper: int, seed: int = 0) -> list[int]:
    """Log-normal example lengths in tokens, clipped to [16, upper]."""
    rng = random.Random(f"chat-lengths-{seed}")
    return [min(upper, max(16, int(rng.lognormvariate(math.log(median), sigma)))) for _ in range(count)]


def chat_records(count: int, profile: Profile, seed: int = 0) -> list[dict[str, Any]]:
    """Chat examples of long-tailed length (in tokens, as `chat_lengths` draws them): a user turn of
    about a third and an answer of the rest."""
    rng = random.Random(f"chat-{seed}")
    records = []
    for length in chat_lengths(count, profile.chat_median_tokens, profile.chat_sigma, profile.seq_length, seed):
        body = max(2, int((length - CHAT_SCAFFOLD_TOKENS) / CHAT_TOKENS_PER_WORD))
        user = max(1, body // 3)
        messages = [
            {"role": "system", "content": tiny.SYSTEM_PROMPT},
            {"role": "user", "content": _words(rng, user)},
            {"role": "assistant", "content": _words(rng, body - user)},
        ]
        records.append({"messages": messages})
    return records


def sequences_needed(profile: Profile, dataset: str) -> int:
    """Training examples for `profile.steps` optimizer steps (packing merges chat examples: a pack
    holds about seq_length / mean length of them, so write that many times more)."""
    needed = profile.global_batch * profile.steps
    if dataset == "chat":
        mean = profile.chat_median_tokens * math.exp(profile.chat_sigma**2 / 2)
        needed = int(needed * max(1.0, profile.seq_length / mean) * 1.3)
    return needed + profile.global_batch


def write_dataset(directory: Path, profile: Profile, dataset: str) -> Path:
    """Write `<dataset>.jsonl` for `profile` into `directory`; returns its path."""
    count = sequences_needed(profile, dataset)
    records = uniform_records(count, profile.seq_length) if dataset == "uniform" else chat_records(count, profile)
    return tiny.write_jsonl(directory / f"{dataset}.jsonl", records)


def spec_overrides(profile: Profile, dataset: str, model: Path, train: Path) -> dict[str, Any]:
    """The FineTuneJob spec of one benchmark run (both trainers read it)."""
    return deep_merge(
        {
            "model": {"source": str(model)},
            "dataset": {
                "train": str(train),
                "format": "text" if dataset == "uniform" else "chat",
                "maxSeqLength": profile.seq_length,
                "packing": dataset == "chat",
                # A few examples for the end-of-run evaluation; the figures never include it.
                "validationSplit": 0.02,
                "maxLeakageFraction": 1.0,
            },
            "hyperparameters": {
                "epochs": 1,
                "maxSteps": profile.steps,
                "learningRate": 1e-4,
                "scheduler": "constant",
                "warmupRatio": 0.0,
                "microBatchSize": profile.micro_batch,
                "gradientAccumulationSteps": profile.accumulation,
                "seed": 7,
            },
            "distributed": {
                "workers": 1,
                "processesPerWorker": profile.processes,
                "accelerator": profile.accelerator,
                "zeroStage": profile.zero_stage,
                "precision": profile.precision,
            },
            # No checkpoint inside the measured window (the overheads part measures them on its own).
            "checkpointing": {"everySteps": 10 * profile.steps, "keep": 1},
        },
        profile.extra_spec,
    )


def write_manifest(path: Path, profile: Profile, dataset: str, model: Path, train: Path) -> Path:
    """A validated FineTuneJob manifest for one run; returns its path."""
    document = a_job(f"bench-{dataset}").spec(spec_overrides(profile, dataset, model, train)).build(validate=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def describe(profile: Profile) -> dict[str, Any]:
    """The profile as plain data for the results file."""
    return json.loads(json.dumps(profile, default=lambda o: o.__dict__))
