"""The trainer's shell: manifest and paths, exit-reason mapping, DeepSpeed config, model options and the
metrics/progress endpoint — without a launch."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.invocation import TrainerInvocation
from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ExitReason, ProgressSnapshot, TrainerResult
from kubetune.api.status import Progress
from kubetune.trainer.config import load_job, resolve_path, run_paths
from kubetune.trainer.engine import deepspeed_config, warmup_steps
from kubetune.trainer.errors import ConfigError, DataError, classify
from kubetune.trainer.handover import ResultHandover
from kubetune.trainer.metrics import Guard, TrainerMetrics, serve
from kubetune.trainer.model import set_dropout
from kubetune.trainer.outputs import Recorder
from tests.support import tiny
from tests.support.builders import a_job
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(60)


def job(overrides: dict[str, Any] | None = None) -> FineTuneJob:
    return tiny.a_tiny_job("model", "train.jsonl").spec(overrides).to_job()


def args(tmp_path: Path, **kw: Any) -> TrainerInvocation:
    return TrainerInvocation(config=str(tmp_path / "job.yaml"), workdir=str(tmp_path / "work"), **kw)


def test_paths_resolve_pvc_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", "/mounts")
    assert resolve_path("pvc://data/sets/train.jsonl", tmp_path) == Path("/mounts/data/sets/train.jsonl")
    assert resolve_path("data/train.jsonl", tmp_path) == tmp_path / "data/train.jsonl"
    assert resolve_path("/abs/train.jsonl", tmp_path) == Path("/abs/train.jsonl")
    default = run_paths(args(tmp_path), job())
    assert (default.checkpoints, default.output) == (tmp_path / "work/checkpoints", tmp_path / "work/output")
    stored = run_paths(args(tmp_path), job({"storage": {"checkpoints": "pvc://scratch/run1"}}))
    assert (stored.checkpoints, stored.output) == (Path("/mounts/scratch/run1"), Path("/mounts/scratch/run1/output"))
    flags = args(tmp_path, checkpoint_dir="/ck", output_dir="/out")
    assert (run_paths(flags, job()).checkpoints, run_paths(flags, job()).output) == (Path("/ck"), Path("/out"))


def test_a_bad_manifest_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(a_job("x").model("m").train("t.jsonl").hyperparameters(learning_rate=-1).build()))
    with pytest.raises(ConfigError, match=r"spec\.hyperparameters\.learning_rate|learningRate"):
        load_job(str(path))
    path.write_text("a: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(str(path))


@pytest.mark.parametrize(
    ("error", "reason", "retryable", "text"),
    [
        (DataError("train.jsonl:3: bad"), ExitReason.DATA_ERROR, False, "train.jsonl:3: bad"),
        (MemoryError(), ExitReason.OUT_OF_MEMORY, True, "microBatchSize (now 4)"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), ExitReason.OUT_OF_MEMORY, True, "smaller"),
        (
            RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:29500"),
            ExitReason.PEER_LOST,
            True,
            "another rank",
        ),
        (ValueError("something else"), None, True, "(ValueError: something else); this is not one of"),
    ],
)
def test_classify_maps_every_failure_to_one_reason(
    error: BaseException, reason: ExitReason | None, retryable: bool, text: str
) -> None:
    got, message, is_retryable = classify(error, micro_batch_size=4)
    assert (got, is_retryable) == (reason, retryable) and text in message


def test_oom_from_torch_is_recognised() -> None:
    import torch

    assert classify(torch.OutOfMemoryError("CUDA out of memory"))[0] is ExitReason.OUT_OF_MEMORY


def test_deepspeed_config_follows_the_spec() -> None:
    spec = job(
        {
            "hyperparameters": {"microBatchSize": 2, "gradientAccumulationSteps": 3, "maxGradNorm": 0.5},
            "distributed": {"zeroStage": 3, "offloadOptimizer": True, "precision": "bf16"},
        }
    ).spec
    config = deepspeed_config(spec, world=4)
    assert config["train_batch_size"] == 2 * 3 * 4 and config["gradient_clipping"] == 0.5
    assert (
        config["zero_optimization"]["stage"] == 3
        and config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    )
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    no_clip = deepspeed_config(job({"hyperparameters": {"maxGradNorm": 0}}).spec, world=1)
    assert "gradient_clipping" not in no_clip
    assert warmup_steps(job({"hyperparameters": {"warmupRatio": 0.1}}).spec, 95) == 10


def test_dropout_override_reaches_every_dropout_field() -> None:
    from transformers import GPT2Config, LlamaConfig

    llama = LlamaConfig(attention_dropout=0.0)
    assert set_dropout(llama, 0.2) == ["attention_dropout"] and llama.attention_dropout == 0.2
    gpt2 = GPT2Config()
    assert {"resid_pdrop", "embd_pdrop", "attn_pdrop"} <= set(set_dropout(gpt2, 0.3))
    assert gpt2.attn_pdrop == 0.3


def test_metrics_and_progress_are_served_together(tmp_path: Path) -> None:
    metrics = TrainerMetrics("my-job", "team")
    recorder = Recorder(tmp_path, enabled=True)
    recorder.publish(progress=Progress(step=3, total_steps=10), phase="Training")
    metrics.record_step(loss=2.5, lr=1e-4, grad_norm=0.7, epoch=0.3, tokens=120, seconds=0.2)
    port = free_port()
    server = serve(port, metrics.registry, recorder.progress_json)
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=5) as response:
            snapshot = ProgressSnapshot.model_validate_json(response.read())
    finally:
        server.shutdown()
        server.server_close()
    assert families["kubetune_train_loss"].samples[0].value == 2.5
    assert families["kubetune_tokens"].samples[0].labels == {"finetunejob": "my-job", "namespace": "team"}
    assert "kubetune_gpu_memory_peak_bytes" not in families, "GPU metrics must not appear on CPU runs"
    assert snapshot.progress.step == 3 and snapshot.phase == "Training"
    assert ProgressSnapshot.model_validate_json((tmp_path / "progress.json").read_text()) == snapshot


def test_progress_and_result_need_the_attempts_token_and_refusals_are_counted(tmp_path: Path) -> None:
    """A peer that reaches rank 0 but cannot read the pod's spec gets neither the progress nor the result,
    and cannot take the result away (DELETE); /metrics stays open to Prometheus."""
    metrics = TrainerMetrics("my-job", "team")
    recorder = Recorder(tmp_path, enabled=True)
    recorder.publish(progress=Progress(step=3, total_steps=10), phase="Training")
    handover = ResultHandover()
    handover.offer(TrainerResult(outcome="Succeeded", reason="Succeeded", message="done", retryable=False))
    port = free_port()
    guard = Guard(token="s3cret", refused=metrics.unauthenticated)
    server = serve(port, metrics.registry, recorder.progress_json, handover, guard)
    assert server is not None

    def ask(method: str, path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    try:
        refused = [ask("GET", "/progress", None), ask("GET", "/result", "wrong"), ask("DELETE", "/result", None)]
        assert refused == [401, 401, 401]
        assert handover.body() is not None  # nobody took it away
        assert ask("GET", "/metrics", None) == 200
        assert [ask("GET", "/progress", "s3cret"), ask("GET", "/result", "s3cret")] == [200, 200]
        assert ask("DELETE", "/result", "s3cret") == 204
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        server.shutdown()
        server.server_close()
    assert families["kubetune_unauthenticated_requests"].samples[0].value == 3
