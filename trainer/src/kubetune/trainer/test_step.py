"""One optimizer step of the loop with a stand-in for DeepSpeed's engine: what backward receives, an fp16
overflow skipped by the loss scaler and counted, and a non-finite loss that sets the gauge before the run
stops."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kubetune.trainer.config import RunPaths
from kubetune.trainer.distributed import Rank
from kubetune.trainer.errors import NonFiniteLossError
from kubetune.trainer.loop import Trainer
from kubetune.trainer.loss import token_loss_sum, trained_tokens
from kubetune.trainer.metrics import TrainerMetrics
from kubetune.trainer.outputs import Recorder
from kubetune.trainer.packing import BatchPlan, collate
from kubetune.trainer.state import StopRequest
from kubetune.trainer.test_loss import DATA, tiny_llama
from tests.support import tiny

pytestmark = pytest.mark.timeout(60)


class FakeEngine:
    """What the loop uses of a DeepSpeedEngine; `overflow` makes every step() one the fp16 scaler skips."""

    def __init__(self, module: Any, overflow: bool = False) -> None:
        self.module, self.overflow = module, overflow
        self.skipped_steps = 0
        self.scaled: list[float] = []

    def __call__(self, **kwargs: Any) -> Any:
        return self.module(**kwargs)

    def backward(self, loss: Any, scale_wrt_gas: bool = True) -> None:
        assert not scale_wrt_gas, "the loop weighs tokens itself"
        self.scaled.append(float(loss.detach()))
        loss.backward()

    def step(self) -> None:
        self.skipped_steps += int(self.overflow)

    def get_lr(self) -> list[float]:
        return [1e-3]

    def get_global_grad_norm(self) -> float:
        return 1.0

    def train(self) -> None:
        pass


def trainer(tmp_path: Path, engine: FakeEngine, metrics: TrainerMetrics) -> Trainer:
    job = tiny.a_tiny_job("model", "train.jsonl").spec({"hyperparameters": {"gradientAccumulationSteps": 2}}).to_job()
    paths = RunPaths(tmp_path / "job.yaml", tmp_path / "work", tmp_path / "checkpoints", tmp_path / "output")
    plan = BatchPlan(items=len(DATA), world=1, micro_batch=4, accumulation=2, seed=0)
    data: Any = SimpleNamespace(sequences=DATA)
    rank = Rank(0, 1, 0, torch.device("cpu"))
    tokenizer = SimpleNamespace(pad_token_id=0)
    recorder = Recorder(tmp_path / "work", enabled=True)
    return Trainer(job, paths, rank, engine, tokenizer, data, plan, StopRequest(), metrics, recorder)


def value(metrics: TrainerMetrics, name: str) -> float:
    sample = metrics.registry.get_sample_value(name, {"finetunejob": "tiny", "namespace": "default"})
    assert sample is not None, name
    return sample


def poisoned(model: Any) -> Any:
    with torch.no_grad():
        model.model.norm.weight[0] = math.nan
    return model


def test_each_micro_batch_is_scaled_by_the_steps_trained_tokens(tmp_path: Path) -> None:
    engine, metrics = FakeEngine(tiny_llama()), TrainerMetrics("tiny", "default")
    loop = trainer(tmp_path, engine, metrics)
    loop._step()
    total = trained_tokens(DATA)
    assert loop.head is not None, "a plain Llama takes the chunked loss"
    assert len(engine.scaled) == 2
    # Each micro-batch's summed token loss was scaled by world / step tokens = 1 / total: they add up to
    # the step's loss, which is what is published.
    assert value(metrics, "kubetune_train_loss") == pytest.approx(sum(engine.scaled), rel=1e-6)
    for indexes, scaled in zip(loop.plan.micro_batches(0, 0), engine.scaled, strict=True):
        batch = collate([DATA[i] for i in indexes], 0, packed=False)
        assert scaled == pytest.approx(float(token_loss_sum(engine.module, batch).detach()) / total, rel=1e-5)
    assert value(metrics, "kubetune_skipped_steps_total") == 0


def test_a_non_finite_loss_sets_the_gauge_then_stops_the_run(tmp_path: Path) -> None:
    metrics = TrainerMetrics("tiny", "default")
    loop = trainer(tmp_path, FakeEngine(poisoned(tiny_llama())), metrics)
    with pytest.raises(NonFiniteLossError, match="training loss became nan at step 1"):
        loop._step()
    assert math.isnan(value(metrics, "kubetune_train_loss"))


def test_an_fp16_overflow_is_skipped_by_the_loss_scaler_and_counted(tmp_path: Path) -> None:
    metrics = TrainerMetrics("tiny", "default")
    loop = trainer(tmp_path, FakeEngine(poisoned(tiny_llama()), overflow=True), metrics)
    loop._step()
    assert loop.state.step == 1
    assert value(metrics, "kubetune_skipped_steps_total") == 1
    assert value(metrics, "kubetune_train_loss") == 0  # never set to the overflowed value
    (line,) = (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["skipped"] and record["train_loss"] is None and record["grad_norm"] is None
