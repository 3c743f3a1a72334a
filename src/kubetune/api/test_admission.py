"""The admission policies' CEL and their Python twins agree: one table of cases, both languages, verdicts
and messages compared, with a real CEL interpreter (cel-python).

cel-python has neither Kubernetes' `authorizer` nor the strings extension (`split`, `trim`, `join`): the
stand-ins below, here and only here, implement them as Kubernetes documents them; the real API server
runs the same policies in tests/e2e/test_admission.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

import celpy
import pytest
from celpy import celtypes
from pydantic import BaseModel

from kubetune.api.admission import ACCESS_RULES, access_refusals, judged_cel, policy_specs
from kubetune.api.job import FineTuneJob, FineTuneJobSpec
from kubetune.api.platform_policy import PlatformPolicy, PolicyError, policy_problems
from kubetune.api.platform_rules import platform_refusals
from kubetune.api.training import SecretKeyRef
from tests.support.builders import a_job

USER, NAMESPACE = "system:serviceaccount:team-a:bob", "team-a"
POLICY_NAME, POLICY_NAMESPACE = "kt-kubetune-platform-policy", "kubetune-system"


@dataclass(frozen=True)
class _Authorizer:
    """Kubernetes' CEL `authorizer`, answering from a set of (resource, name) the user may get."""

    grants: frozenset[tuple[str, str]]
    asked: tuple[tuple[str, str], ...] = ()

    def then(self, key: str, value: Any) -> _Authorizer:
        return _Authorizer(self.grants, (*self.asked, (key, str(value))))

    def allowed(self) -> celtypes.BoolType:
        asked = dict(self.asked)
        assert asked["group"] == "" and asked["verb"] == "get" and asked["namespace"] == NAMESPACE, asked
        return celtypes.BoolType((asked["resource"], asked["name"]) in self.grants)


def _step(key: str) -> Callable[[_Authorizer, Any], _Authorizer]:
    return lambda authorizer, value: authorizer.then(key, value)


STAND_INS: dict[str, Any] = {
    "split": lambda text, separator: celtypes.ListType(celtypes.StringType(p) for p in str(text).split(str(separator))),
    "trim": lambda text: celtypes.StringType(str(text).strip()),
    "join": lambda items, separator: celtypes.StringType(str(separator).join(str(i) for i in items)),
    "group": _step("group"),
    "resource": _step("resource"),
    "namespace": _step("namespace"),
    "name": _step("name"),
    "check": _step("verb"),
    "allowed": _Authorizer.allowed,
}
ENVIRONMENT = celpy.Environment()


def _cel(expression: str, activation: dict[str, Any]) -> Any:
    return ENVIRONMENT.program(ENVIRONMENT.compile(expression), functions=STAND_INS).evaluate(activation)


def _activation(spec: dict[str, Any], old_spec: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    to_cel = celpy.json_to_cel  # type: ignore[attr-defined]
    request = {"operation": "UPDATE" if old_spec else "CREATE", "namespace": NAMESPACE, "userInfo": {"username": USER}}
    activation = {"object": to_cel({"spec": spec}), "request": to_cel(request)}
    if old_spec is not None:
        activation["oldObject"] = to_cel({"spec": old_spec})
    return activation | more


def _cel_refusals(policy: str, activation: dict[str, Any]) -> list[str]:
    """The messages of every validation of `policy` (a key of policy_specs()) that refuses."""
    spec = policy_specs()[policy]
    variables: dict[Any, Any] = {}
    for variable in spec.get("variables", []):
        value = _cel(variable["expression"], activation | {"variables": celtypes.MapType(variables)})
        variables[celtypes.StringType(variable["name"])] = value
    activation = activation | {"variables": celtypes.MapType(variables)}
    refused = [v for v in spec["validations"] if not _cel(v["expression"], activation)]
    return [str(_cel(v["messageExpression"], activation)) for v in refused]


# -- author access --------------------------------------------------------------------------------------------

MODEL = {"source": "hf://org/model", "tokenSecretRef": {"name": "hf-token", "key": "token"}}
ON_CLAIMS = {
    "model": {"source": "pvc://models/llama"},
    "dataset": {"train": "pvc://data/train.jsonl", "validation": "pvc://data/val.jsonl"},
    "storage": {"checkpoints": "pvc://scratch/ckpt", "output": "pvc://results/out"},
}
REFERENCE = {
    "evaluation": {
        "baselines": {},
        "referenceModel": {"source": "hf://org/big", "tokenSecretRef": {"name": "hub-2", "key": "t"}},
    }
}
CLAIMS = {"models", "data", "scratch", "results"}

#: (spec, what the user may get, the fields refused in rule order)
ACCESS_CASES: list[tuple[dict[str, Any], set[tuple[str, str]], list[str]]] = [
    ({"model": MODEL, "dataset": {"train": "/data/t.jsonl"}}, {("secrets", "hf-token")}, []),
    ({"model": MODEL, "dataset": {"train": "/data/t.jsonl"}}, set(), ["spec.model.tokenSecretRef"]),
    ({"model": MODEL, "dataset": {"train": "/data/t.jsonl"}}, {("secrets", "other")}, ["spec.model.tokenSecretRef"]),
    ({"model": {"source": "hf://org/m"}, "dataset": {"train": "t.jsonl"}}, set(), []),
    (ON_CLAIMS, {("persistentvolumeclaims", c) for c in CLAIMS}, []),
    (
        ON_CLAIMS,
        {("persistentvolumeclaims", "data")},
        ["spec.model.source", "spec.storage.checkpoints", "spec.storage.output"],
    ),
    (ON_CLAIMS, {("secrets", c) for c in CLAIMS}, ["spec.model.source", "spec.dataset.train",
     "spec.dataset.validation", "spec.storage.checkpoints", "spec.storage.output"]),
    ({"model": {"source": "pvc://models"}, "dataset": {"train": "t.jsonl"}}, set(), ["spec.model.source"]),
    ({**ON_CLAIMS, **REFERENCE}, {("persistentvolumeclaims", c) for c in CLAIMS},
     ["spec.evaluation.referenceModel.tokenSecretRef"]),
    ({"model": {"source": "hf://o/m"}, "dataset": {"train": "t.jsonl"},
      "evaluation": {"baselines": {}, "referenceModel": {"source": "pvc://refs/big"}}}, set(),
     ["spec.evaluation.referenceModel.source"]),
]  # fmt: skip


def _wire_forms(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The spec as written, and as stored after the API's defaults (the validated job's wire form)."""
    job = FineTuneJob.model_validate(a_job("demo").spec(spec).build())
    return [spec, job.to_wire()["spec"]]


@pytest.mark.parametrize(("spec", "grants", "refused"), ACCESS_CASES)
def test_author_access_cel_and_python_agree(
    spec: dict[str, Any], grants: set[tuple[str, str]], refused: list[str]
) -> None:
    for form in _wire_forms(spec):
        python = access_refusals(form, USER, NAMESPACE, lambda resource, name: (resource, name) in grants)
        cel = _cel_refusals("authorAccess", _activation(form, authorizer=_Authorizer(frozenset(grants))))
        assert cel == python
        assert [message.split(":")[0] for message in python] == refused


def test_an_author_access_refusal_names_field_rule_user_and_object() -> None:
    (message,) = access_refusals({"model": MODEL}, USER, NAMESPACE, lambda *_: False)
    assert message == (
        'spec.model.tokenSecretRef: refused by rule "author-may-get-secrets": user '
        f'"{USER}" may not get Secret "hf-token" in namespace "team-a"; the pods of the job would receive its keys'
    )
    (claim,) = access_refusals({"dataset": {"train": "pvc://data/t.jsonl"}}, USER, NAMESPACE, lambda *_: False)
    assert 'spec.dataset.train: refused by rule "author-may-get-claims"' in claim
    assert 'PersistentVolumeClaim "data"' in claim


def _leaf_types(annotation: Any) -> list[Any]:
    return [annotation] if isinstance(annotation, type) else [t for a in get_args(annotation) for t in _leaf_types(a)]


def _references(model: type[BaseModel], path: tuple[str, ...] = ()) -> set[tuple[tuple[str, ...], bool]]:
    """(wire path, is a claim) of every SecretKeyRef and every `pvc://` string field under `model`."""
    found = set()
    for name, field in model.model_fields.items():
        here = (*path, field.alias or name)
        pattern = next((m.pattern for m in field.metadata if getattr(m, "pattern", None)), "")
        for leaf in _leaf_types(field.annotation):
            if leaf is SecretKeyRef:
                found.add((here, False))
            elif issubclass(leaf, BaseModel):
                found |= _references(leaf, here)
            elif leaf is str and "pvc://" in pattern:
                found.add((here, True))
    return found


def test_every_secret_and_claim_field_of_the_api_is_judged() -> None:
    """A new SecretKeyRef or `pvc://` field in the API models fails here until it has a rule."""
    assert {(rule.path, rule.claim) for rule in ACCESS_RULES} == _references(FineTuneJobSpec)
    assert len(ACCESS_RULES) == 8


# -- platform ------------------------------------------------------------------------------------------------

POLICY = {
    "allowedImages": "ghcr.io/acme/trainer, registry.example.com/ml/,\n sha256:abc123",
    "allowedPriorityClasses": "team-low,team-high",
    "allowedTolerationKeys": "nvidia.com/gpu",
    "allowedNodeSelectorKeys": "pool, kubernetes.io/arch",
    "maxGangProcesses": "8",
    "maxGPUsPerJob": "4",
}
CPU = {"accelerator": "cpu"}


def _spec(**parts: Any) -> dict[str, Any]:
    return {"model": {"source": "hf://org/m"}, "dataset": {"train": "t.jsonl"}, **parts}


def _scheduling(**fields: Any) -> dict[str, Any]:
    return _spec(scheduling=fields)


#: (spec, the policy's data, the rules refused in order)
PLATFORM_CASES: list[tuple[dict[str, Any], dict[str, str], list[str]]] = [
    (_spec(), POLICY, []),
    (_spec(image="ghcr.io/acme/trainer:1.2"), POLICY, []),
    (_spec(image="ghcr.io/acme/trainer"), POLICY, []),
    (_spec(image="ghcr.io/acme/trainer@sha256:feed"), POLICY, []),
    (_spec(image="ghcr.io/acme/trainer/cuda:12"), POLICY, []),
    (_spec(image="ghcr.io/acme/trainer-evil:1"), POLICY, ["allowed-images"]),
    (_spec(image="ghcr.io/acme/train:1"), POLICY, ["allowed-images"]),
    (_spec(image="registry.example.com/ml/anything:3"), POLICY, []),
    (_spec(image="registry.example.com/mlx:3"), POLICY, ["allowed-images"]),
    (_spec(image="docker.io/someone/x@sha256:abc123"), POLICY, []),
    (_spec(image="docker.io/someone/x@sha256:abc1234"), POLICY, ["allowed-images"]),
    (_spec(image="docker.io/someone/x:latest"), POLICY, ["allowed-images"]),
    (_spec(image="docker.io/someone/x:latest"), {}, []),
    (_spec(image="docker.io/someone/x:latest"), {"allowedImages": "*"}, []),
    (_spec(image="docker.io/someone/x:latest"), {"allowedImages": ""}, ["allowed-images"]),
    (_scheduling(priorityClassName="team-low"), POLICY, []),
    (_scheduling(priorityClassName="system-node-critical"), POLICY, ["allowed-priority-classes"]),
    (_scheduling(priorityClassName="x"), {"allowedPriorityClasses": " "}, ["allowed-priority-classes"]),
    (_scheduling(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]), POLICY, []),
    (_scheduling(tolerations=[{"operator": "Exists"}]), POLICY, ["allowed-toleration-keys"]),
    (_scheduling(tolerations=[{"key": "", "operator": "Exists"}]), POLICY, ["allowed-toleration-keys"]),
    (_scheduling(tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]), POLICY,
     ["allowed-toleration-keys"]),
    (_scheduling(tolerations=[{"operator": "Exists"}]), {}, []),
    (_scheduling(nodeSelector={"pool": "a100", "kubernetes.io/arch": "amd64"}), POLICY, []),
    (_scheduling(nodeSelector={"node-role.kubernetes.io/control-plane": ""}), POLICY, ["allowed-node-selector-keys"]),
    (_spec(distributed={"workers": 4, "processesPerWorker": 2, **CPU}), POLICY, []),
    (_spec(distributed={"workers": 3, "processesPerWorker": 3, **CPU}), POLICY, ["max-gang-processes"]),
    (_spec(distributed={"workers": 9, **CPU}), POLICY, ["max-gang-processes"]),
    (_spec(distributed={"workers": 2, "processesPerWorker": 2}), POLICY, []),
    (_spec(distributed={"workers": 4, "processesPerWorker": 2}), POLICY, ["max-gpus-per-job"]),
    (_spec(distributed={"workers": 5, "accelerator": "nvidia-gpu"}), POLICY, ["max-gpus-per-job"]),
    (_spec(distributed={"workers": 16, "processesPerWorker": 2}), POLICY, ["max-gang-processes", "max-gpus-per-job"]),
    (_spec(distributed={"workers": 256, "processesPerWorker": 16}), {}, []),
    (_spec(image="x:1", scheduling={"priorityClassName": "p", "tolerations": [{"operator": "Exists"}],
           "nodeSelector": {"gpu": "a"}}, distributed={"workers": 9}), POLICY,
     ["allowed-images", "allowed-priority-classes", "allowed-toleration-keys", "allowed-node-selector-keys",
      "max-gang-processes", "max-gpus-per-job"]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "data", "refused"), PLATFORM_CASES)
def test_platform_cel_and_python_agree(spec: dict[str, Any], data: dict[str, str], refused: list[str]) -> None:
    params = celpy.json_to_cel({"metadata": {"name": POLICY_NAME, "namespace": POLICY_NAMESPACE}, "data": data})  # type: ignore[attr-defined]
    for form in _wire_forms(spec):
        python = platform_refusals(form, PlatformPolicy.from_data(data))
        assert _cel_refusals("platform", _activation(form, params=params)) == python
        assert [message.split('"')[1] for message in python] == refused


def test_platform_refusals_name_the_field_the_rule_and_the_limit() -> None:
    spec = _spec(image="docker.io/x:1", distributed={"workers": 9, **CPU})
    image, gang = platform_refusals(spec, PlatformPolicy.from_data(POLICY))
    assert image == (
        'spec.image: refused by rule "allowed-images": image "docker.io/x:1" matches no allowedImages entry of the '
        "platform policy (ghcr.io/acme/trainer, registry.example.com/ml/, sha256:abc123)"
    )
    assert gang == (
        'spec.distributed.workers: refused by rule "max-gang-processes": 9 workers x 1 processes per worker = 9 '
        "processes, above the maxGangProcesses of the platform policy (8)"
    )


#: (the policy's data, whether it is well formed)
POLICIES: list[tuple[dict[str, str], bool]] = [
    (POLICY, True),
    ({}, True),
    ({"allowedImage": "x"}, False),
    ({"maxGangProcesses": "eight"}, False),
    ({"maxGPUsPerJob": "-1"}, False),
    ({"maxGPUsPerJob": "1234567890"}, False),
    ({"maxGPUsPerJob": "0"}, True),
]


@pytest.mark.parametrize(("data", "usable"), POLICIES)
def test_a_malformed_policy_refuses_every_job_in_cel_and_python(data: dict[str, str], usable: bool) -> None:
    params = celpy.json_to_cel({"metadata": {"name": POLICY_NAME, "namespace": POLICY_NAMESPACE}, "data": data})  # type: ignore[attr-defined]
    refusals = _cel_refusals("platform", _activation(_spec(distributed=CPU), params=params))
    assert (refusals == []) == usable == (policy_problems(data) == [])
    if not usable:
        assert refusals == [
            f"platform policy ConfigMap {POLICY_NAMESPACE}/{POLICY_NAME}: refused by rule "
            '"policy-well-formed": it has an unknown key or a limit that is not a whole number; every FineTuneJob '
            "is refused until it is fixed (kubetune validate --policy names the key)"
        ]
        with pytest.raises(PolicyError):
            PlatformPolicy.from_data(data)


# -- which requests are judged ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "judged"),
    [
        (None, _spec(), True),
        (_spec(), _spec(), False),
        (_spec(), _spec(suspend=True), False),
        (_spec(suspend=True), _spec(suspend=False), False),
        (_spec(), _spec(image="x:1"), True),
        (_spec(image="x:1"), _spec(), True),
        (_spec(suspend=True), _spec(suspend=True, scheduling={"priorityClassName": "p"}), True),
        (_spec(), _spec(model=MODEL), True),
    ],
)
def test_updates_are_judged_when_the_spec_changes_beyond_suspend(
    old: dict[str, Any] | None, new: dict[str, Any], judged: bool
) -> None:
    assert bool(_cel(judged_cel(), _activation(new, old))) == judged
