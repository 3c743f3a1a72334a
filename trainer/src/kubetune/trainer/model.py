"""Loading the pre-trained model and tokenizer, adapting it (dropout, LoRA) and exporting the result.

Sources: a local folder (or `pvc://`, mounted by the operator), `hf://org/name` (the hub, or its
offline cache when HF_HUB_OFFLINE=1; the token comes from HF_TOKEN, which the operator fills from
`model.tokenSecretRef`; `model.revision` pins a branch, tag or commit), or a GGUF file inside the folder
(`model.ggufFile`, de-quantized by transformers). Every load failure is a ModelError naming the source.

The export is what users deploy, so it is written as a whole or not at all: into a temporary sibling
folder first, then renamed over the output folder. LoRA adapters are merged into the base weights
unless `lora.merge` is false (then the adapter alone is exported, loadable with peft). Under ZeRO-3 the
model is loaded straight into shards and exported one parameter at a time (kubetune.trainer.zero3).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.training import LoraSpec, ModelSpec
from kubetune.trainer.config import resolve_path
from kubetune.trainer.errors import ModelError
from kubetune.trainer.zero3 import gathered_state_dict, merged_lora_state_dict

#: Config attributes that hold dropout probabilities, by name ending (Llama, Qwen, GPT-2, BERT, ...).
_DROPOUT_SUFFIXES = ("dropout", "pdrop", "dropout_prob", "dropout_rate")


def source_and_options(spec: ModelSpec, base: Path) -> tuple[str, dict[str, Any]]:
    """What to pass to `from_pretrained`: a local folder or hub id, and revision/token/gguf options."""
    options: dict[str, Any] = {}
    if spec.source.startswith("hf://"):
        source = spec.source.removeprefix("hf://")
        if spec.revision:
            options["revision"] = spec.revision
        if os.environ.get("HF_TOKEN"):
            options["token"] = os.environ["HF_TOKEN"]
    else:
        path = resolve_path(spec.source, base)
        if not path.exists():
            raise ModelError(f"model.source {spec.source}: not found (resolved to {path})")
        source = str(path)
    if spec.gguf_file:
        options["gguf_file"] = spec.gguf_file
    return source, options


def load_tokenizer(spec: ModelSpec, base: Path) -> Any:
    from transformers import AutoTokenizer

    source, options = source_and_options(spec, base)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except Exception as error:
        raise ModelError(f"model.source {spec.source}: cannot load the tokenizer: {error}") from error
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss, so any token works; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelError(f"model.source {spec.source}: the tokenizer has no end-of-sequence token")
    return tokenizer


def set_dropout(config: Any, probability: float) -> list[str]:
    """Set every dropout probability of a transformers config (nested configs too); returns the names."""
    changed = []
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and name.endswith(_DROPOUT_SUFFIXES):
            setattr(config, name, probability)
            changed.append(name)
        elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
            changed += [f"{name}.{inner}" for inner in set_dropout(value, probability)]
    return changed


def load_model(spec: FineTuneJobSpec, base: Path, dtype: Any) -> Any:
    """The causal LM with the spec's dropout override and LoRA adapters applied, on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source, options = source_and_options(spec.model, base)
    try:
        config = AutoConfig.from_pretrained(source, **options)
        if spec.hyperparameters.dropout is not None:
            set_dropout(config, spec.hyperparameters.dropout)
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, **options)
    except Exception as error:  # (files this user may not read were named by the preflight already)
        raise ModelError(f"model.source {spec.model.source}: cannot load the model: {error}") from error
    model.config.use_cache = False
    if spec.model.gguf_file:
        forget_gguf_quantization(model)
    if spec.method.uses_lora:
        model = add_lora(model, spec.method.lora or LoraSpec())
    return model


def forget_gguf_quantization(model: Any) -> None:
    """transformers de-quantizes GGUF weights to the requested dtype while loading but keeps the GGUF
    "quantizer" attached, which then refuses `save_pretrained`. Nothing quantized remains, so detach it:
    the fine-tuned model is exported as an ordinary safetensors checkpoint."""
    model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def add_lora(model: Any, spec: LoraSpec) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts any number
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type=TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ModelError(f"method.lora.targetModules: {error}") from error


def export(
    module: Any,
    tokenizer: Any,
    output: Path,
    merge_lora: bool,
    zero_stage: int,
    is_main: bool,
    may_replace: Callable[[], bool] = lambda: True,
) -> None:
    """Write the model (safetensors) and tokenizer to `output`, atomically. Call on every rank: under ZeRO-3
    the parameters are gathered one at a time to rank 0's CPU (kubetune.trainer.zero3). `may_replace` is
    asked right before the written model replaces `output` (the attempt's fence, kubetune.trainer.fencing):
    when it says no, the written copy is removed and `output` is left as it is."""
    lora = hasattr(module, "merge_and_unload")
    adapter_only = lora and not merge_lora
    state = gathered_state_dict(module, is_main, trainable_only=adapter_only) if zero_stage == 3 else None
    if not is_main:
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.parent / f".{output.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    if state is None:
        model = module.merge_and_unload() if merge_lora and lora else module
        model.config.use_cache = True
        model.save_pretrained(partial, safe_serialization=True)
    elif merge_lora and lora:
        base = module.get_base_model()
        base.config.use_cache = True
        base.save_pretrained(partial, state_dict=merged_lora_state_dict(module, state), safe_serialization=True)
    else:
        module.config.use_cache = True
        module.save_pretrained(partial, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    if not may_replace():
        shutil.rmtree(partial, ignore_errors=True)
        return
    replace_folder(partial, output)


def replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`, replacing what is there; `target` is never half-written."""
    old = target.parent / f".{target.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
