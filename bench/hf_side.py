"""The baseline: one rank of transformers' `Trainer` on the same job, run under torchrun like kubetune.

What is kept equal, by construction rather than by care:

- the DeepSpeed config is `kubetune.trainer.engine.deepspeed_config` (the very dict kubetune hands to
  `deepspeed.initialize`), passed as `TrainingArguments(deepspeed=...)`;
- the examples are kubetune's own tokenization of the same file (`kubetune.trainer.dataset.prepare`
  with packing off: same truncation, same loss masks, same EOS), so both sides learn the same tokens;
- model, dtype, micro-batch, accumulation, learning rate, schedule, weight decay, clipping and seed come
  from the same manifest.

What differs is what a typical user of `Trainer` does and kubetune does not: batches are padded to the
longest example of each micro-batch (`DataCollatorForSeq2Seq`, labels padded with -100) in a random
order, and nothing is packed.

Every rank writes `<out>/rank<R>.json`: the non-padding tokens of every micro-batch in the order the
collator built them, and (rank 0) the wall-clock time at the end of every optimizer step. The
orchestrator (`bench.trainers`) turns them into the same figures as kubetune's metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def _arguments(job: Any, out: Path, ds_config: dict[str, Any], extra: dict[str, Any]) -> Any:
    from transformers import TrainingArguments

    from kubetune.trainer.engine import SCHEDULERS

    hp = job.spec.hyperparameters
    precision = job.spec.distributed.precision
    return TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=hp.micro_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=SCHEDULERS[hp.scheduler],
        warmup_steps=0,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        max_steps=hp.max_steps,
        num_train_epochs=hp.epochs,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        deepspeed=ds_config,
        optim="adamw_torch",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=job.spec.distributed.accelerator != "cpu",
        remove_unused_columns=False,
        **extra,
    )


class CountingCollator:
    """Pads like `DataCollatorForSeq2Seq` and remembers each micro-batch's non-padding tokens."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.pad = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=-100)
        self.tokens: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        self.tokens.append(sum(len(f["input_ids"]) for f in features))
        return self.pad(features)


def _step_clock(times: list[float]) -> Any:
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        """Wall-clock time at the end of every optimizer step."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            times.append(time.time())

    return StepClock()


def _cpu_deepspeed_state(job: Any) -> dict[str, Any]:
    """accelerate only sets up DeepSpeed's process group on an accelerator: on the CPU it decides "no
    distributed training" and the Trainer would run as a gang of one. So on the CPU the group is joined
    here exactly as kubetune joins it (`deepspeed.init_distributed`, gloo), accelerate's shared state is
    built on it and marked as DeepSpeed's, and the Trainer is told to use that state. Everything after
    that (the engine, ZeRO, the optimizer step) is the Trainer's ordinary DeepSpeed path. On GPUs
    nothing is needed: accelerate's own path runs. Returns extra TrainingArguments."""
    if job.spec.distributed.accelerator != "cpu":
        return {}
    import deepspeed
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    deepspeed.init_distributed(dist_backend="gloo")
    state = PartialState(cpu=True, backend="gloo")
    state.distributed_type = DistributedType.DEEPSPEED
    return {"accelerator_config": {"use_configured_state": True}}


def _peak_memory() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def run(config: Path, out: Path) -> None:
    import torch
    from datasets import Dataset
    from transformers import Trainer

    from kubetune.trainer.config import load_job
    from kubetune.trainer.dataset import prepare
    from kubetune.trainer.engine import deepspeed_config
    from kubetune.trainer.model import load_model, load_tokenizer

    job = load_job(str(config))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    spec = job.spec
    base = config.parent
    tokenizer = load_tokenizer(spec.model, base)
    unpacked = spec.dataset.model_copy(update={"packing": False})
    data = prepare(unpacked, base, spec.hyperparameters.seed, tokenizer)
    rows = [{"input_ids": s.input_ids, "labels": s.labels} for s in data.sequences]
    dataset = Dataset.from_list(rows)
    dtype = torch.bfloat16 if spec.distributed.precision == "bf16" else torch.float32
    model = load_model(spec, base, dtype)
    extra = _cpu_deepspeed_state(job)
    times: list[float] = []
    collator = CountingCollator(tokenizer)
    trainer = Trainer(
        model=model,
        args=_arguments(job, out, deepspeed_config(spec, world), extra),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[_step_clock(times)],
    )
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": rank,
        "world": world,
        "accumulation": spec.hyperparameters.gradient_accumulation_steps,
        "micro_batch_tokens": collator.tokens,
        "step_end_times": times,
        "peak_memory_bytes": _peak_memory(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "engine": type(trainer.model_wrapped).__name__,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    # As kubetune does at its end: without it, a gloo thread can abort the process at exit.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the FineTuneJob manifest")
    parser.add_argument("--out", type=Path, required=True, help="folder for rank<R>.json")
    args = parser.parse_args()
    if os.environ.get("DS_ACCELERATOR") is None and "cpu" in os.environ.get("KUBETUNE_BENCH_ACCELERATOR", ""):
        os.environ["DS_ACCELERATOR"] = "cpu"
    run(args.config, args.out)


if __name__ == "__main__":
    main()
