"""Tiny, offline stand-ins for a pre-trained model, its data and its manifest, for tests.

No test may download a model, so every test that trains builds one here from a config: a byte-level
BPE tokenizer trained in-process on a fixed corpus (any text encodes, nothing is unknown) with a
ChatML chat template, and a two-layer Llama with random weights. Building both takes well under a
second; `tiny_model_dir` caches the result per pytest session.

The datasets are a learnable task — a fixed, arbitrary mapping from a word to a word — written as
`text`, `prompt-completion` or `chat` JSONL. The writers can plant exact duplicates in the training
set and copy validation examples into it (train/validation leakage), so the trainer's data report has
something to catch.

Use from any test area:

    from tests.support import tiny
    model = tiny.tiny_model_dir(tmp_path_factory)             # cached per session
    train, val = tiny.write_dataset(tmp_path, "chat", train=64, validation=16)
    manifest = tiny.a_tiny_job(model, train, val).hyperparameters(max_steps=8).build()  # builders.JobBuilder
    path = tiny.write_manifest(tmp_path / "job.yaml", model, train, val, {"hyperparameters": {"maxSteps": 8}})
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.builders import JobBuilder, a_job

#: Special tokens of the tiny tokenizer. `<|im_end|>` closes every chat turn; `<|endoftext|>` ends a
#: text or prompt-completion example; padding has its own token so that masks are unambiguous.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, IM_START, IM_END]

#: ChatML, as Qwen and SmolLM2 write it: `<|im_start|>role\ncontent<|im_end|>\n` per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Words of the task. The mapping pairs each with another, chosen by a fixed shuffle (seeded).
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "tiger",
    "piano",
    "window",
    "silver",
    "garden",
    "orange",
    "candle",
    "rocket",
    "forest",
    "yellow",
    "bridge",
    "mirror",
    "castle",
    "dragon",
    "summer",
    "winter",
    "marble",
    "violet",
    "pepper",
    "anchor",
    "falcon",
    "lemon",
    "meadow",
    "thunder",
    "copper",
    "velvet",
    "harbor",
]
SYSTEM_PROMPT = "You map words."
_CORPUS_REPEAT = 20

#: The tiny model's architecture (a Llama: RMSNorm, rotary positions, SwiGLU, as most current LLMs).
MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
    # Larger than Llama's 0.02: with 64 dimensions and tiny weights the frozen embeddings and final norm
    # cap the logits near uniform, and a LoRA run (which cannot change them) would barely learn.
    "initializer_range": 0.2,
}


def mapping(seed: int = 0) -> dict[str, str]:
    """The task: word -> word, a fixed derangement of WORDS for a given seed."""
    targets = list(WORDS)
    random.Random(seed).shuffle(targets)
    return dict(zip(WORDS, targets[1:] + targets[:1], strict=True))


def _corpus() -> list[str]:
    pairs = mapping()
    lines = [f"Map {source} to {target}." for source, target in pairs.items()]
    lines += [f"Map: {source}\nAnswer: {target}" for source, target in pairs.items()]
    lines += [
        f"{IM_START}user\n{source}{IM_END}\n{IM_START}assistant\n{target}{IM_END}\n" for source, target in pairs.items()
    ]
    lines.append("The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()[]{}<>/\\|-_+=*&^%$#@~`")
    return lines * _CORPUS_REPEAT


def build_tokenizer(directory: Path) -> Any:
    """A byte-level BPE tokenizer (vocabulary about 400) with ChatML template, saved into `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_tiny_model(directory: Path | str, seed: int = 0) -> Path:
    """Write a tokenizer and a randomly initialised 2-layer Llama (about 60k parameters) to `directory`,
    loadable with `AutoModelForCausalLM.from_pretrained(directory)`. Takes about a second."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        **MODEL_CONFIG,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def build_tiny_gguf(directory: Path, name: str = "tiny.gguf") -> Path:
    """The tiny model and its tokenizer as one GGUF file (float32 tensors, a GPT-2 style BPE vocabulary, as
    SmolLM2's), written with the `gguf` package the way llama.cpp lays out a Llama; transformers loads it
    with `gguf_file=`. The Hugging Face folder it was made from is `directory / "hf"`. Returns the file."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = build_tiny_model(directory / "hf")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    config, path = model.config, directory / name
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    core = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [token for token, _ in sorted(core["model"]["vocab"].items(), key=lambda item: item[1])]
    special = {added["id"]: added["content"] for added in core["added_tokens"]}
    tokens += [""] * (max(special) + 1 - len(tokens))
    for index, content in special.items():
        tokens[index] = content
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])  # 3: control, 1: normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in core["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    layers = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    for layer in range(config.num_hidden_layers):
        names |= {
            f"model.layers.{layer}.{ours}.weight": f"blk.{layer}.{theirs}.weight" for ours, theirs in layers.items()
        }
    for key, tensor in model.state_dict().items():
        if key in names:  # lm_head is tied to the embeddings
            writer.add_tensor(names[key], tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built once per pytest session (under the session's base temp folder)."""
    directory = tmp_path_factory.getbasetemp() / "tiny-model"
    if not (directory / "config.json").exists():
        partial = tmp_path_factory.mktemp("tiny-model-build")
        build_tiny_model(partial)
        partial.rename(directory)
    return directory


def record(fmt: str, source: str, target: str) -> dict[str, Any]:
    """One example of the task in the given format (`text`, `prompt-completion` or `chat`)."""
    if fmt == "text":
        return {"text": f"Map: {source}\nAnswer: {target}"}
    if fmt == "prompt-completion":
        return {"prompt": f"Map: {source}\nAnswer:", "completion": f" {target}"}
    if fmt == "chat":
        return {
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": source},
                {"role": "assistant", "content": target},
            ]
        }
    raise ValueError(f"unknown format {fmt!r}")


def examples(fmt: str, count: int, seed: int = 0, start: int = 0) -> list[dict[str, Any]]:
    """`count` distinct-as-far-as-possible examples: the i-th maps WORDS[i % len] (numbered past the
    first round, e.g. `apple2`, so that examples stay unique), starting at index `start`."""
    pairs = list(mapping(seed).items())
    out = []
    for index in range(start, start + count):
        source, target = pairs[index % len(pairs)]
        round_ = index // len(pairs)
        suffix = str(round_) if round_ else ""
        out.append(record(fmt, source + suffix, target + suffix))
    return out


def preference_examples(count: int, seed: int = 0, start: int = 0, chat: bool = False) -> list[dict[str, Any]]:
    """`count` preference pairs: the mapping's prompt answered with the target word ending in `.` (chosen)
    or in `?` (rejected). The preference is learnable from any pair and holds on pairs never trained on
    (the same two tokens decide every pair), while a random model ranks them by chance."""
    out = []
    for example in examples("prompt-completion", count, seed, start):
        answer = example["completion"]
        if chat:
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": example["prompt"]}]
            out.append({"messages": messages, "chosen": f"{answer.strip()}.", "rejected": f"{answer.strip()}?"})
        else:
            out.append({"prompt": example["prompt"], "chosen": f"{answer}.", "rejected": f"{answer}?"})
    return out


def write_jsonl(path: Path | str, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write records as JSON Lines; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_dataset(
    directory: Path | str,
    fmt: str = "prompt-completion",
    train: int = 64,
    validation: int | None = 16,
    duplicates: int = 0,
    leaked: int = 0,
    seed: int = 0,
) -> tuple[Path, Path | None]:
    """Write `train.jsonl` (and `validation.jsonl` unless `validation` is None) into `directory`.

    duplicates: exact copies of the first training examples appended to the training file.
    leaked: copies of the first validation examples appended to the training file.
    Returns (train path, validation path or None).
    """
    directory = Path(directory)
    train_records = examples(fmt, train, seed)
    val_records = examples(fmt, validation, seed, start=train) if validation else []
    train_records += train_records[:duplicates] + val_records[:leaked]
    train_path = write_jsonl(directory / "train.jsonl", train_records)
    val_path = write_jsonl(directory / "validation.jsonl", val_records) if validation else None
    return train_path, val_path


#: A spec that trains the tiny model to a falling loss in a few seconds on two CPU processes.
BASE_SPEC: dict[str, Any] = {
    "dataset": {"format": "auto", "maxSeqLength": 64},
    "hyperparameters": {
        "epochs": 1,
        "learningRate": 3e-3,
        "scheduler": "constant",
        "warmupRatio": 0.0,
        "microBatchSize": 4,
        "seed": 7,
    },
    "distributed": {"workers": 1, "processesPerWorker": 2, "accelerator": "cpu", "zeroStage": 2, "precision": "fp32"},
    "checkpointing": {"everySteps": 4, "keep": 2},
}


def a_tiny_job(
    model: Path | str, train: Path | str, validation: Path | str | None = None, name: str = "tiny"
) -> JobBuilder:
    """The job of a tiny run (BASE_SPEC) on these files: a builders.JobBuilder to add to."""
    return a_job(name).spec(BASE_SPEC).model(model).train(train).validation(validation)


def write_manifest(
    path: Path | str,
    model: Path | str,
    train: Path | str,
    validation: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    name: str = "tiny",
) -> Path:
    """Write the tiny run's manifest, validated, as YAML to `path` (`overrides` merged into its spec by the
    builder's rule: tests/support/builders.py); returns the path."""
    manifest = a_tiny_job(model, train, validation, name).spec(overrides).build(validate=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path
