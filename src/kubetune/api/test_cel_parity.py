"""The CRD's CEL rules and the Python rules are one rule written twice: a real CEL interpreter (cel-python)
evaluates every rule on a table of objects and must agree with pydantic's verdict.

cel-python has no Kubernetes quantity library (`isQuantity`, `quantity`, `sign`, `compareTo`): the stand-ins
below, here and only here, are the Python port of Kubernetes' parser that pydantic uses, so these tests check
the rules' structure (int-or-string branches, map comprehensions, guards); the real API server test
(tests/integration/controlplane/test_api_server.py) checks the quantity library itself against pydantic.
The output-path rule's table (PATH_CASES) also runs on the real API server
(tests/integration/controlplane/test_output_paths.py), which checks that its cost fits the budget.
"""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from celpy import celtypes
from pydantic import BaseModel, ValidationError

from kubetune.api.crd import open_api_schema
from kubetune.api.job import FineTuneJobSpec, immutability_cel_rule
from kubetune.api.kubernetes_syntax import is_qualified_name, parse_quantity, qualified_name_cel
from kubetune.api.operations import (
    EarlyStoppingSpec,
    EvaluationSpec,
    ResourcesSpec,
    SchedulingSpec,
    StorageSpec,
    TolerationSpec,
)
from kubetune.api.training import DatasetSpec, DistributedSpec, MethodSpec, ModelSpec
from tests.support.builders import a_job

SPEC = {"model": {"source": "hf://org/m"}, "dataset": {"train": "t.jsonl"}}

#: `pvc://` paths written plainly or not (an empty, `.` or `..` segment).
PLAIN_OR_NOT = [
    "pvc://c/run", "pvc://c/run/", "pvc://c", "pvc://c/", "pvc://c/a.b/..c/c../.d", "pvc://c/run/..",
    "pvc://c/../run", "pvc://c/./run", "pvc://c/run/.", "pvc://c//run", "pvc://c/run//", "pvc://c/a/../b/f.jsonl",
]  # fmt: skip

#: Spec parts whose folders may or may not overlap (the output-path rule); each is a case of its own below.
PATH_CASES: list[dict[str, Any]] = [
    {"storage": {"checkpoints": "pvc://c/run", "output": "pvc://c/run"}},
    {"storage": {"checkpoints": "pvc://c/run", "output": "pvc://c/run/out"}},
    {"storage": {"checkpoints": "pvc://c/run/ckpt", "output": "pvc://c/run"}},
    {"storage": {"checkpoints": "pvc://c/run/", "output": "pvc://c/run"}},
    {"storage": {"checkpoints": "pvc://c/run/", "output": "pvc://c/run/out/"}},
    {"storage": {"checkpoints": "pvc://c", "output": "pvc://c/out"}},
    {"storage": {"checkpoints": "pvc://c/run", "output": "pvc://c/run2"}},
    {"storage": {"checkpoints": "pvc://c/run", "output": "pvc://d/run"}},
    {"storage": {"checkpoints": "pvc://c/run"}},
    {"storage": {"output": "pvc://c/out"}},
    {"dataset": {"train": "pvc://d/data/t.jsonl"}, "storage": {"output": "pvc://d/data"}},
    {"dataset": {"train": "pvc://d/data/t.jsonl"}, "storage": {"output": "pvc://d/data/t.jsonl"}},
    {"dataset": {"train": "pvc://d/data/t.jsonl"}, "storage": {"output": "pvc://d/data-out"}},
    {"dataset": {"train": "t.jsonl", "validation": "pvc://d/v.jsonl"}, "storage": {"output": "pvc://d"}},
    {"dataset": {"train": "t.jsonl", "validation": "pvc://d/v.jsonl"}, "storage": {"checkpoints": "pvc://d/"}},
    {"dataset": {"train": "t.jsonl", "validation": "v.jsonl"}, "storage": {"checkpoints": "pvc://d"}},
    {"dataset": {"train": "pvc://d/t/x.jsonl"}, "storage": {"checkpoints": "pvc://d/t/x.jsonl/ckpt"}},
    {"model": {"source": "pvc://m"}, "storage": {"checkpoints": "pvc://m/ckpt"}},
    {"model": {"source": "pvc://m/base"}, "storage": {"output": "pvc://m"}},
    {"model": {"source": "pvc://m/base"}, "storage": {"output": "pvc://m/tuned"}},
    {"model": {"source": "hf://m/base"}, "storage": {"output": "pvc://m/base"}},
    {"model": {"source": "/m/base"}, "storage": {"output": "pvc://m/base"}},
    {"evaluation": {"referenceModel": {"source": "pvc://m/big"}, "baselines": {}}, "storage": {"output": "pvc://m"}},
    {"evaluation": {"referenceModel": {"source": "pvc://m/big"}, "baselines": {}}, "storage": {"checkpoints": "pvc://m/big/c"}},
    {"evaluation": {"referenceModel": {"source": "pvc://m/big"}, "baselines": {}}, "storage": {"output": "pvc://m/o"}},
    {"evaluation": {}, "storage": {"output": "pvc://m/o"}},
]  # fmt: skip

CASES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (MethodSpec, {"type": "full"}),
    (MethodSpec, {"type": "lora"}),
    (MethodSpec, {"type": "lora", "lora": {"rank": 4}}),
    (MethodSpec, {"type": "full", "lora": {"rank": 4}}),
    (MethodSpec, {"lora": {"rank": 4}}),
    (ModelSpec, {"source": "hf://a/b", "revision": "v1"}),
    (ModelSpec, {"source": "/models/x", "revision": "v1"}),
    (ModelSpec, {"source": "pvc://c/p", "tokenSecretRef": {"name": "s", "key": "k"}}),
    (ModelSpec, {"source": "hf://a/b", "tokenSecretRef": {"name": "s", "key": "k"}}),
    (DistributedSpec, {"offloadOptimizer": True}),
    (DistributedSpec, {"offloadOptimizer": True, "zeroStage": 0}),
    (DistributedSpec, {"offloadOptimizer": False, "zeroStage": 0}),
    (DistributedSpec, {"gradAccumDtype": "fp32", "zeroStage": 0}),
    (DistributedSpec, {"gradAccumDtype": "fp32", "zeroStage": 0, "precision": "fp32"}),
    (DistributedSpec, {"gradAccumDtype": "fp32", "zeroStage": 1, "precision": "fp16"}),
    (DistributedSpec, {"gradAccumDtype": "precision", "zeroStage": 0}),
    (DistributedSpec, {"gradAccumDtype": "fp32"}),
    (EarlyStoppingSpec, {}),
    (EarlyStoppingSpec, {"metric": "evalTokenAccuracy"}),
    (EarlyStoppingSpec, {"metric": "evalTokenAccuracy", "mode": "max"}),
    (EarlyStoppingSpec, {"metric": "evalLoss", "mode": "max"}),
    (EarlyStoppingSpec, {"mode": "max"}),
    (EvaluationSpec, {"referenceModel": {"source": "hf://a/b"}}),
    (EvaluationSpec, {"referenceModel": {"source": "hf://a/b"}, "baselines": {}}),
    (EvaluationSpec, {"baselines": {"fewShotExamples": 2}}),
    (FineTuneJobSpec, {**SPEC}),
    (FineTuneJobSpec, {**SPEC, "earlyStopping": {}}),
    (FineTuneJobSpec, {**SPEC, "earlyStopping": {}, "evaluation": {}}),
    *((FineTuneJobSpec, {**SPEC, **paths}) for paths in PATH_CASES),
    *((StorageSpec, {"checkpoints": path}) for path in PLAIN_OR_NOT),
    *((StorageSpec, {"output": path}) for path in PLAIN_OR_NOT),
    *((ModelSpec, {"source": path}) for path in PLAIN_OR_NOT),
    *((DatasetSpec, {"train": path}) for path in PLAIN_OR_NOT if path.rstrip("/") != "pvc://c"),  # a file
    (DatasetSpec, {"train": "pvc://data/t.jsonl", "validation": "pvc://data/../v.jsonl"}),
    (DatasetSpec, {"train": "../data/t.jsonl", "validation": "pvc://data/..v.jsonl"}),
    (ModelSpec, {"source": "../models/m"}),
    (DatasetSpec, {"train": "../data//./t.jsonl"}),
    (TolerationSpec, {"operator": "Exists"}),
    (TolerationSpec, {}),
    (TolerationSpec, {"key": ""}),
    (TolerationSpec, {"key": "", "operator": "Exists"}),
    (TolerationSpec, {"key": "gpu", "value": "a100"}),
    (TolerationSpec, {"key": "gpu", "value": ""}),
    (TolerationSpec, {"key": "gpu", "operator": "Exists", "value": "a100"}),
    (TolerationSpec, {"key": "gpu", "operator": "Exists", "value": ""}),
    (TolerationSpec, {"key": "gpu", "tolerationSeconds": 60}),
    (TolerationSpec, {"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 60}),
    (TolerationSpec, {"key": "gpu", "effect": "", "tolerationSeconds": 60}),
    (TolerationSpec, {"key": "gpu", "effect": "NoExecute", "tolerationSeconds": 60}),
    (TolerationSpec, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}),
    (TolerationSpec, {"key": "a/b/c", "operator": "Exists"}),
    (TolerationSpec, {"key": "-gpu", "operator": "Exists"}),
    (TolerationSpec, {"key": "Example.com/gpu", "operator": "Exists"}),
    (SchedulingSpec, {}),
    (SchedulingSpec, {"nodeSelector": {"kubernetes.io/arch": "amd64", "gpu": "a100"}}),
    (SchedulingSpec, {"nodeSelector": {"kubernetes.io/arch": "amd64", "bad key": "x"}}),
    (SchedulingSpec, {"nodeSelector": {"/gpu": "a100"}}),
    (ResourcesSpec, {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}),
    (ResourcesSpec, {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}),
    (ResourcesSpec, {"requests": {"cpu": 2}, "limits": {"cpu": "2000m"}}),
    (ResourcesSpec, {"requests": {"cpu": 3}, "limits": {"cpu": 2}}),
    (ResourcesSpec, {"requests": {"memory": "1Gi"}, "limits": {"memory": "1G"}}),
    (ResourcesSpec, {"requests": {"memory": "1G"}, "limits": {"memory": "1Gi"}}),
    (ResourcesSpec, {"requests": {"cpu": "1", "memory": "64Gi"}, "limits": {"memory": "64Gi"}}),
    (ResourcesSpec, {"requests": {"cpu": "1.0000000001"}, "limits": {"cpu": "1.000000001"}}),  # both round up
    (ResourcesSpec, {"requests": {"memory": "1e3"}, "limits": {"memory": "999"}}),
    (ResourcesSpec, {"requests": {"memory": "64Gi"}}),
]


def _with_scalar_defaults(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores: the CRD applies the scalar defaults before CEL rules run."""
    filled = dict(data)
    for name, field in model.model_fields.items():
        wire = field.alias or name
        if wire not in filled and isinstance(field.default, bool | int | float | str):
            filled[wire] = field.default
    return filled


class _Quantity:
    """Stand-in for Kubernetes' CEL Quantity type (see the module docstring)."""

    def __init__(self, text: str) -> None:
        value = parse_quantity(text)
        if value is None:
            raise ValueError(f"not a quantity: {text!r}")
        self.value = value


def _compare(left: _Quantity, right: _Quantity) -> celtypes.IntType:
    return celtypes.IntType((left.value > right.value) - (left.value < right.value))


QUANTITY_STAND_INS: dict[str, Any] = {
    "isQuantity": lambda text: celtypes.BoolType(parse_quantity(text) is not None),
    "quantity": _Quantity,
    "sign": lambda quantity: celtypes.IntType((quantity.value > 0) - (quantity.value < 0)),
    "compareTo": _compare,
}


def _cel(rule: str, **variables: Any) -> bool:
    environment = celpy.Environment()
    program = environment.program(environment.compile(rule), functions=QUANTITY_STAND_INS)
    to_cel = celpy.json_to_cel  # type: ignore[attr-defined]
    return bool(program.evaluate({name: to_cel(value) for name, value in variables.items()}))


def _python_accepts(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError as error:
        assert all(e["type"] == "rule" for e in error.errors()), error
        return False
    return True


@pytest.mark.parametrize(("model", "data"), CASES, ids=[f"{m.__name__}-{d}" for m, d in CASES])
def test_cel_rules_agree_with_python(model: type[BaseModel], data: dict[str, Any]) -> None:
    rules = [rule.cel for rule in model.rules]  # type: ignore[attr-defined]
    assert rules, f"{model.__name__} has no rules to compare"
    stored = _with_scalar_defaults(model, data)
    assert all(_cel(rule, self=stored) for rule in rules) == _python_accepts(model, data)


def test_the_crd_carries_every_model_rule() -> None:
    text = str(open_api_schema())
    for model, _ in CASES:
        for rule in model.rules:  # type: ignore[attr-defined]
            assert rule.cel in text


#: (a key, whether Kubernetes' IsQualifiedName accepts it)
_PREFIX_253 = ".".join(["a" * 63] * 3 + ["b" * 61])
QUALIFIED_NAMES = [
    ("gpu", True), ("1", True), ("A_b.c-D", True), ("kubernetes.io/arch", True),
    ("node.kubernetes.io/instance-type", True), ("example.com/MyName", True), ("x" * 63, True),
    (f"{_PREFIX_253}/n", True), (f"{_PREFIX_253}/{'n' * 63}", True),
    ("x" * 64, False), (f"{_PREFIX_253}b/n", False), (f"a/{'n' * 64}", False), ("", False), ("/", False),
    ("a/", False), ("/a", False), ("a/b/c", False), ("-a", False), ("a-", False), ("_a", False), ("a_", False),
    ("a b", False), ("Example.com/a", False), ("ex_ample.com/a", False), ("example..com/a", False),
    ("example.com./a", False), ("-example.com/a", False), ("example-.com/a", False), ("é", False),
]  # fmt: skip


@pytest.mark.parametrize(("key", "accepted"), QUALIFIED_NAMES, ids=[repr(k[:40]) for k, _ in QUALIFIED_NAMES])
def test_qualified_name_in_cel_agrees_with_python_and_kubernetes(key: str, accepted: bool) -> None:
    assert is_qualified_name(key) == accepted
    assert _cel(qualified_name_cel("self"), self=key) == accepted


def _quantity_rule() -> str:
    resources = open_api_schema()["properties"]["spec"]["properties"]["resources"]["properties"]
    value_rules = {
        rule["rule"]
        for field in ("requests", "limits")
        for rule in resources[field]["additionalProperties"]["x-kubernetes-validations"]
    }
    assert len(value_rules) == 1, value_rules
    return str(value_rules.pop())


#: (a requests value that passes the schema's types (a string or an integer), whether it is a valid request)
QUANTITIES = [
    ("64Gi", True), ("500m", True), ("1e3", True), ("1E3", True), ("1.5", True), ("8", True), (8, True), (0, True),
    ("0", True), (".5", True), ("1.", True), ("Mi", True), ("+", True), ("1.5Gi", True), ("2e-3", True),
    ("lots", False), ("1.2.3", False), ("", False), ("1e", False), ("1K", False), ("1 Gi", False), ("Gi1", False),
    ("-1", False), (-1, False), ("-1Gi", False), ("1e1.5", False), ("Pi", False),
]  # fmt: skip


@pytest.mark.parametrize(("value", "accepted"), QUANTITIES, ids=[repr(v) for v, _ in QUANTITIES])
def test_quantity_rule_agrees_with_python(value: Any, accepted: bool) -> None:
    assert _cel(_quantity_rule(), self=value) == accepted
    try:
        ResourcesSpec.model_validate({"requests": {"cpu": value}})
        python_accepts = True
    except ValidationError:
        python_accepts = False
    assert python_accepts == accepted


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("demo", True), ("a" * 40, True), ("a" * 41, False), ("Demo", False), ("9lives", False), ("a-", False)],
)
def test_name_rules_agree_with_python(name: str, accepted: bool) -> None:
    from kubetune.api.job import FineTuneJob

    root_rules = [r["rule"] for r in open_api_schema()["x-kubernetes-validations"] if "oldSelf" not in r["rule"]]
    cel_accepts = all(_cel(rule, self={"metadata": {"name": name}}) for rule in root_rules)
    manifest = a_job(name).spec(SPEC).build()
    try:
        FineTuneJob.model_validate(manifest)
        python_accepts = True
    except ValidationError:
        python_accepts = False
    assert cel_accepts == python_accepts == accepted


def _stored(spec_change: dict[str, Any], started: bool, suspend: bool = False) -> dict[str, Any]:
    spec = {**SPEC, "suspend": suspend, "hyperparameters": {"learningRate": 1e-4}, **spec_change}
    return {"spec": spec, **({"status": {"startTime": "2026-01-01T00:00:00Z"}} if started else {})}


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (_stored({}, started=False), _stored({"hyperparameters": {"learningRate": 1.0}}, started=False), True),
        (_stored({}, started=True), _stored({"hyperparameters": {"learningRate": 1.0}}, started=True), False),
        (_stored({}, started=True), _stored({}, started=True, suspend=True), True),
        (_stored({}, started=True), _stored({"image": "x"}, started=True), False),
        (_stored({}, True, True), _stored({"scheduling": {"nodeSelector": {"a": "b"}}}, True, True), True),
        (_stored({}, started=True), _stored({"scheduling": {"nodeSelector": {"a": "b"}}}, started=True), False),
        (_stored({}, started=True), _stored({}, started=True), True),
    ],
)
def test_started_job_spec_is_immutable_except_suspend(old: Any, new: Any, allowed: bool) -> None:
    new = {**new, "status": old.get("status")} if "status" in old else new
    assert _cel(immutability_cel_rule()["rule"], self=new, oldSelf=old) == allowed
