"""The CRD's CEL rules and the Python rules are one rule written twice: a real CEL interpreter (cel-python)
evaluates every rule on a table of objects and must agree with pydantic's verdict."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from pydantic import BaseModel, ValidationError

from kubetune.api.crd import open_api_schema
from kubetune.api.job import FineTuneJobSpec, immutability_cel_rule
from kubetune.api.operations import EarlyStoppingSpec, EvaluationSpec
from kubetune.api.training import DistributedSpec, MethodSpec, ModelSpec
from tests.support.builders import a_job

SPEC = {"model": {"source": "hf://org/m"}, "dataset": {"train": "t.jsonl"}}

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
]


def _with_scalar_defaults(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores: the CRD applies the scalar defaults before CEL rules run."""
    filled = dict(data)
    for name, field in model.model_fields.items():
        wire = field.alias or name
        if wire not in filled and isinstance(field.default, bool | int | float | str):
            filled[wire] = field.default
    return filled


def _cel(rule: str, **variables: Any) -> bool:
    environment = celpy.Environment()
    program = environment.program(environment.compile(rule))
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
