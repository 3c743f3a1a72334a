"""`kubetune validate`: every example passes; a table of broken manifests fails naming the field."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.validation import Document, validate_document, validate_files
from kubetune.cli import main
from tests.support.builders import a_job

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

MINIMAL: dict[str, Any] = a_job("demo").model("hf://org/model").train("data/train.jsonl").build()


def with_change(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with one dotted path set (or removed, when value is DELETE)."""
    manifest = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = manifest
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return manifest


DELETE = object()

# (change path, value, field named in the problem, words in the message)
INVALID = [
    ("apiVersion", "kubetune.io/v1", "apiVersion", "kubetune.io/v1alpha1"),
    ("apiVersion", DELETE, "apiVersion", "required"),
    ("kind", "Job", "kind", "FineTuneJob"),
    ("metadata.name", "x" * 41, "metadata.name", "at most 40"),
    ("metadata.name", "Upper", "metadata.name", "expected form"),
    ("metadata.name", "1starts-with-digit", "metadata.name", "expected form"),
    ("metadata.name", DELETE, "metadata.name", "required"),
    ("spec", DELETE, "spec", "required"),
    ("spec.model", DELETE, "spec.model", "required"),
    ("spec.dataset", DELETE, "spec.dataset", "required"),
    ("spec.model.source", "", "spec.model.source", "at least 1"),
    ("spec.model.source", "s3://bucket/model", "spec.model.source", "expected form"),
    ("spec.model.sorce", "hf://a/b", "spec.model.sorce", "did you mean 'source'"),
    ("spec.model", {"source": "/models/x", "revision": "main"}, "spec.model.revision", "hf://"),
    (
        "spec.model",
        {"source": "pvc://m/x", "tokenSecretRef": {"name": "t", "key": "k"}},
        "spec.model.tokenSecretRef",
        "hf://",
    ),
    ("spec.model.ggufFile", "model.bin", "spec.model.ggufFile", "expected form"),
    ("spec.model.tokenSecretRef", {"name": "tok"}, "spec.model.tokenSecretRef.key", "required"),
    ("spec.dataset.validationSplit", 0, "spec.dataset.validationSplit", "greater than 0"),
    ("spec.dataset.validationSplit", 0.7, "spec.dataset.validationSplit", "at most 0.5"),
    ("spec.dataset.format", "csv", "spec.dataset.format", "one of"),
    ("spec.dataset.testSplit", 0.7, "spec.dataset.testSplit", "at most 0.5"),
    ("spec.dataset.test", "s3://b/t.jsonl", "spec.dataset.test", "expected form"),
    (
        "spec.dataset",
        {"train": "t.jsonl", "test": "x.jsonl", "testSplit": 0.1},
        "spec.dataset.testSplit",
        "not both",
    ),
    ("spec.dataset.format", "preference", "spec.dataset.format", "method.type: dpo"),
    ("spec.method", {"type": "dpo", "dpo": {"reference": "live"}}, "spec.method.dpo.reference", "weights: lora"),
    ("spec.method", {"type": "full", "dpo": {"beta": 0.1}}, "spec.method.dpo", "type: dpo"),
    ("spec.method", {"type": "dpo", "dpo": {"beta": 0}}, "spec.method.dpo.beta", "greater than 0"),
    ("spec.method", {"type": "dpo", "dpo": {"labelSmoothing": 0.5}}, "spec.method.dpo.labelSmoothing", "at most 0.49"),
    ("spec.method", {"type": "dpo", "lora": {"rank": 8}}, "spec.method.lora", "dpo.weights: lora"),
    ("spec.dataset.maxSeqLength", -5, "spec.dataset.maxSeqLength", "at least 8"),
    ("spec.dataset.maxSeqLength", "long", "spec.dataset.maxSeqLength", "integer"),
    ("spec.dataset.packing", "sometimes", "spec.dataset.packing", "boolean"),
    ("spec.dataset.maxLeakageFraction", 2, "spec.dataset.maxLeakageFraction", "at most 1"),
    ("spec.method", {"type": "qlora"}, "spec.method.type", "one of"),
    ("spec.method", {"type": "full", "lora": {"rank": 8}}, "spec.method.lora", "type: lora"),
    ("spec.method", {"type": "lora", "lora": {"rank": 0}}, "spec.method.lora.rank", "at least 1"),
    ("spec.method", {"type": "lora", "lora": {"dropout": 1}}, "spec.method.lora.dropout", "less than 1"),
    ("spec.method", {"type": "lora", "lora": {"targetModules": []}}, "spec.method.lora.targetModules", "at least 1"),
    ("spec.hyperparameters", {"learningRate": -1}, "spec.hyperparameters.learningRate", "greater than 0 (got -1)"),
    ("spec.hyperparameters", {"learningRate": 0}, "spec.hyperparameters.learningRate", "greater than 0"),
    (
        "spec.hyperparameters",
        {"learningrate": 1e-4},
        "spec.hyperparameters.learningrate",
        "did you mean 'learningRate'",
    ),
    ("spec.hyperparameters", {"epochs": 0}, "spec.hyperparameters.epochs", "at least 1"),
    ("spec.hyperparameters", {"maxSteps": 0}, "spec.hyperparameters.maxSteps", "at least 1"),
    ("spec.hyperparameters", {"scheduler": "step"}, "spec.hyperparameters.scheduler", "one of"),
    ("spec.hyperparameters", {"warmupRatio": 0.9}, "spec.hyperparameters.warmupRatio", "at most 0.5"),
    ("spec.hyperparameters", {"weightDecay": -0.1}, "spec.hyperparameters.weightDecay", "at least 0"),
    ("spec.hyperparameters", {"dropout": 1.0}, "spec.hyperparameters.dropout", "less than 1"),
    ("spec.hyperparameters", {"microBatchSize": 0}, "spec.hyperparameters.microBatchSize", "at least 1"),
    (
        "spec.hyperparameters",
        {"gradientAccumulationSteps": -2},
        "spec.hyperparameters.gradientAccumulationSteps",
        "at least 1",
    ),
    ("spec.hyperparameters", {"maxGradNorm": -1}, "spec.hyperparameters.maxGradNorm", "at least 0"),
    ("spec.hyperparameters", {"seed": -1}, "spec.hyperparameters.seed", "at least 0"),
    ("spec.distributed", {"workers": 0}, "spec.distributed.workers", "at least 1"),
    ("spec.distributed", {"processesPerWorker": 17}, "spec.distributed.processesPerWorker", "at most 16"),
    ("spec.distributed", {"zeroStage": 4}, "spec.distributed.zeroStage", "at most 3"),
    ("spec.distributed", {"precision": "fp8"}, "spec.distributed.precision", "one of"),
    ("spec.distributed", {"accelerator": "tpu"}, "spec.distributed.accelerator", "one of"),
    ("spec.distributed", {"zeroStage": 0, "offloadOptimizer": True}, "spec.distributed.offloadOptimizer", "zeroStage"),
    ("spec.evaluation", {"everySteps": 0}, "spec.evaluation.everySteps", "at least 1"),
    ("spec.evaluation", {"referenceModel": {"source": "hf://a/b"}}, "spec.evaluation.referenceModel", "baselines"),
    (
        "spec.evaluation",
        {"baselines": {"fewShotExamples": 64}},
        "spec.evaluation.baselines.fewShotExamples",
        "at most 32",
    ),
    ("spec.evaluation", {"baselines": {"embeddings": "tfidf"}}, "spec.evaluation.baselines.embeddings", "one of"),
    ("spec.earlyStopping", {"patience": 2}, "spec.earlyStopping", "evaluation"),
    ("spec.earlyStopping", {"patience": 0}, "spec.earlyStopping.patience", "at least 1"),
    ("spec.earlyStopping", {"metric": "accuracy"}, "spec.earlyStopping.metric", "one of"),
    ("spec.earlyStopping", {"metric": "evalTokenAccuracy"}, "spec.earlyStopping.mode", "mode: max"),
    ("spec.earlyStopping", {"minDelta": -0.1}, "spec.earlyStopping.minDelta", "at least 0"),
    ("spec.checkpointing", {"everySteps": 0}, "spec.checkpointing.everySteps", "at least 1"),
    ("spec.checkpointing", {"keep": 0}, "spec.checkpointing.keep", "at least 1"),
    ("spec.retryPolicy", {"maxRestarts": -1}, "spec.retryPolicy.maxRestarts", "at least 0"),
    ("spec.retryPolicy", {"backoffSeconds": -1}, "spec.retryPolicy.backoffSeconds", "at least 0"),
    ("spec.retryPolicy", {"maxRetries": 3}, "spec.retryPolicy.maxRetries", "did you mean 'maxRestarts'"),
    ("spec.storage", {"checkpoints": "/local/dir"}, "spec.storage.checkpoints", "expected form"),
    ("spec.resources", {"limits": {"memory": "lots"}}, "spec.resources.limits.memory", "expected form"),
    ("spec.resources", {"limits": {"Memory!": "1Gi"}}, "spec.resources.limits.Memory!", "expected form"),
    ("spec.resources", {"limits": {"memory": "1.2.3"}}, "spec.resources.limits.memory", "expected form"),
    ("spec.resources", {"limits": {"memory": "1K"}}, "spec.resources.limits.memory", "expected form"),
    ("spec.resources", {"requests": {"cpu": "-1"}}, "spec.resources.requests.cpu", "at least 0"),
    ("spec.resources", {"requests": {"cpu": -2}}, "spec.resources.requests.cpu", "at least 0"),
    ("spec.resources", {"requests": {"cpu": 1.5}}, "spec.resources.requests.cpu", "quantity string"),
    ("spec.resources", {"requests": {"cpu": True}}, "spec.resources.requests.cpu", "quantity string"),
    ("spec.resources", {"requests": {"memory": "1" * 65}}, "spec.resources.requests.memory", "at most 64"),
    ("spec.resources", {"requests": {"cpu": "2"}, "limits": {"cpu": 1}}, "spec.resources.requests", "exceed the limit"),
    (
        "spec.resources",
        {"requests": {"memory": "1Gi"}, "limits": {"memory": "1G"}},
        "spec.resources.requests",
        "exceed the limit",
    ),
    ("spec.scheduling", {"tolerations": [{"operator": "Maybe"}]}, "spec.scheduling.tolerations[0].operator", "one of"),
    ("spec.scheduling", {"tolerations": [{}]}, "spec.scheduling.tolerations[0].operator", "operator: Exists"),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "", "operator": "Equal"}]},
        "spec.scheduling.tolerations[0].operator",
        "operator: Exists",
    ),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "dedicated", "operator": "Exists", "value": "ml"}]},
        "spec.scheduling.tolerations[0].value",
        "must be empty",
    ),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "dedicated", "tolerationSeconds": 30}]},
        "spec.scheduling.tolerations[0].tolerationSeconds",
        "effect: NoExecute",
    ),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "dedicated", "effect": "NoSchedule", "tolerationSeconds": 30}]},
        "spec.scheduling.tolerations[0].tolerationSeconds",
        "effect: NoExecute",
    ),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "dedicated", "effect": "Never"}]},
        "spec.scheduling.tolerations[0].effect",
        "one of",
    ),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "a/b/c", "operator": "Exists"}]},
        "spec.scheduling.tolerations[0].key",
        "qualified name",
    ),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "dedicated", "value": "x" * 64}]},
        "spec.scheduling.tolerations[0].value",
        "at most 63",
    ),
    (
        "spec.scheduling",
        {"tolerations": [{"key": "dedicated", "value": "machine learning"}]},
        "spec.scheduling.tolerations[0].value",
        "expected form",
    ),
    ("spec.scheduling", {"nodeSelector": {"accelerator type": "a100"}}, "spec.scheduling.nodeSelector", "qualified"),
    ("spec.scheduling", {"nodeSelector": {"x" * 64: "a100"}}, "spec.scheduling.nodeSelector", "qualified name"),
    ("spec.scheduling", {"nodeSelector": {"Example.com/x": "a"}}, "spec.scheduling.nodeSelector", "qualified name"),
    ("spec.scheduling", {"nodeSelector": {"disk": "-ssd"}}, "spec.scheduling.nodeSelector.disk", "expected form"),
    ("spec.scheduling", {"nodeSelector": {"disk": "s" * 64}}, "spec.scheduling.nodeSelector.disk", "at most 63"),
    ("spec.scheduling", {"queueName": "q" * 64}, "spec.scheduling.queueName", "at most 63"),
    ("spec.scheduling", {"queueName": "team queue"}, "spec.scheduling.queueName", "expected form"),
    ("spec.scheduling", {"priorityClassName": "High"}, "spec.scheduling.priorityClassName", "expected form"),
    ("spec.scheduling", {"priorityClassName": "p" * 254}, "spec.scheduling.priorityClassName", "at most 253"),
    ("spec.scheduling", {"hostNetwork": True}, "spec.scheduling.hostNetwork", "unknown field"),
    ("spec.securityContext", {"privileged": True}, "spec.securityContext", "unknown field"),
    ("spec.podTemplate", {"spec": {}}, "spec.podTemplate", "unknown field"),
    ("spec.activeDeadlineSeconds", 0, "spec.activeDeadlineSeconds", "at least 1"),
    ("spec.ttlSecondsAfterFinished", -1, "spec.ttlSecondsAfterFinished", "at least 0"),
    ("spec.suspend", "yes please", "spec.suspend", "boolean"),
]


# A misspelt enum value gets a suggestion, as a misspelt field name does; none when nothing is close.
# (change path, value, field named in the problem, the suggested value or None)
MISSPELT_VALUES = [
    ("spec.earlyStopping", {"metric": "eval_loss"}, "spec.earlyStopping.metric", "evalLoss"),
    ("spec.earlyStopping", {"metric": "EvalPerplexity"}, "spec.earlyStopping.metric", "evalPerplexity"),
    ("spec.earlyStopping", {"metric": "tokenAccuracy"}, "spec.earlyStopping.metric", "evalTokenAccuracy"),
    ("spec.earlyStopping", {"metric": "perplexity", "mode": "minimum"}, "spec.earlyStopping.mode", "min"),
    ("spec.dataset.format", "prompt_completion", "spec.dataset.format", "prompt-completion"),
    ("spec.dataset.format", "Chat", "spec.dataset.format", "chat"),
    ("spec.dataset.format", "csv", "spec.dataset.format", None),
    ("spec.method", {"type": "LoRA"}, "spec.method.type", "lora"),
    ("spec.method", {"type": "qlora"}, "spec.method.type", "lora"),
    ("spec.hyperparameters", {"scheduler": "cosin"}, "spec.hyperparameters.scheduler", "cosine"),
    ("spec.hyperparameters", {"scheduler": "step"}, "spec.hyperparameters.scheduler", None),
    ("spec.distributed", {"accelerator": "gpu"}, "spec.distributed.accelerator", "nvidia-gpu"),
    ("spec.distributed", {"accelerator": "tpu"}, "spec.distributed.accelerator", None),
    ("spec.distributed", {"precision": "BF16"}, "spec.distributed.precision", "bf16"),
    ("spec.distributed", {"precision": "fp8"}, "spec.distributed.precision", None),
    ("spec.scheduling", {"tolerations": [{"operator": "exists"}]}, "spec.scheduling.tolerations[0].operator", "Exists"),
    ("kind", "Job", "kind", "FineTuneJob"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "meant"), MISSPELT_VALUES, ids=[f"{c[0]}={c[1]!r:.30}" for c in MISSPELT_VALUES]
)
def test_a_misspelt_enum_value_gets_a_suggestion(path: str, value: Any, field: str, meant: str | None) -> None:
    problems = [p for p in _problems(with_change(path, value)) if p.startswith(f"job.yaml: {field}: ")]
    assert len(problems) == 1 and "must be one of" in problems[0], problems
    if meant is None:
        assert "did you mean" not in problems[0]
    else:
        assert problems[0].endswith(f"; did you mean {meant!r}?)"), problems[0]


def test_a_misspelt_field_name_inside_a_list_gets_a_suggestion() -> None:
    problems = _problems(with_change("spec.scheduling", {"tolerations": [{"operatr": "Exists"}]}))
    assert any("tolerations[0].operatr: unknown field (did you mean 'operator'?)" in p for p in problems), problems


def _problems(manifest: Any) -> list[str]:
    job, problems = validate_document(Document("job.yaml", manifest, None))
    assert (job is None) == bool(problems)
    return [str(p) for p in problems]


@pytest.mark.parametrize(("path", "value", "field", "words"), INVALID, ids=[f"{c[0]}={c[1]!r:.20}" for c in INVALID])
def test_invalid_manifest_is_rejected_naming_the_field(path: str, value: Any, field: str, words: str) -> None:
    problems = _problems(with_change(path, value))
    assert any(p.startswith(f"job.yaml: {field}: ") and words in p for p in problems), problems


def test_minimal_manifest_is_valid() -> None:
    assert _problems(MINIMAL) == []


#: Kubernetes syntax the API server accepts in a pod, so the API accepts it too.
VALID = [
    ("spec.resources", {"requests": {"cpu": "500m", "memory": "64Gi"}, "limits": {"memory": "64Gi"}}),
    ("spec.resources", {"requests": {"cpu": "1.5", "memory": "1e9"}, "limits": {"cpu": 2, "memory": "1G"}}),
    ("spec.resources", {"requests": {"cpu": 8, "ephemeral-storage": "0"}}),
    ("spec.resources", {"requests": {"memory": "1G"}, "limits": {"memory": "1Gi"}}),
    ("spec.scheduling", {"tolerations": [{"operator": "Exists"}]}),
    ("spec.scheduling", {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
    ("spec.scheduling", {"tolerations": [{"key": "dedicated", "value": "ml", "effect": ""}]}),
    ("spec.scheduling", {"tolerations": [{"key": "spot", "effect": "NoExecute", "tolerationSeconds": 60}]}),
    ("spec.scheduling", {"nodeSelector": {"kubernetes.io/arch": "amd64", "Disk_Type": "", "pool": "A.b-c_9"}}),
    ("spec.scheduling", {"queueName": "team-a.queue_1", "priorityClassName": "high-priority.example.com"}),
]


@pytest.mark.parametrize(("path", "value"), VALID, ids=[f"{c[0]}={c[1]!r:.30}" for c in VALID])
def test_kubernetes_syntax_the_api_server_accepts_is_valid(path: str, value: Any) -> None:
    assert _problems(with_change(path, value)) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(example: Path) -> None:
    jobs, problems = validate_files([str(example)])
    assert problems == [] and len(jobs) == 1


def test_cli_names_file_line_and_field_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = with_change("spec.hyperparameters", {"learningRate": -1})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "---\n" + yaml.safe_dump(bad, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "learningRate" in text)
    assert f"{path}:{line}: document 2: spec.hyperparameters.learningRate: must be greater than 0 (got -1)" in err


def test_cli_accepts_all_examples_and_stdin() -> None:
    ok = subprocess.run([sys.executable, "-m", "kubetune.cli", "validate", *map(str, EXAMPLES)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    piped = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "validate", "-"],
        input=yaml.safe_dump(with_change("spec.dataset.format", "csv")).encode(),
        capture_output=True,
    )
    assert piped.returncode == 2 and b"<stdin>:" in piped.stderr and b"spec.dataset.format" in piped.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [("spec: [unclosed", "not valid YAML"), ("", "no YAML document"), ("- 1\n- 2\n", "got a YAML list")],
)
def test_unparseable_files_are_reported(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    _, problems = validate_files([str(path)])
    assert len(problems) == 1 and words in str(problems[0]) and str(path) in str(problems[0])


def test_missing_file_is_reported() -> None:
    _, problems = validate_files(["/nonexistent/job.yaml"])
    assert "cannot read" in str(problems[0])
