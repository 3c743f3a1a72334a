"""The admission policies' CEL and their Python twins agree: one table of cases, both languages, verdicts
and messages compared, with a real CEL interpreter (cel-python).

Kubernetes' own CEL functions are stood in for as tests/support/kubernetes_cel.py says; the real API server
runs the same policies in tests/e2e/test_admission.py.
"""

from __future__ import annotations

from typing import Any, get_args

import celpy
import pytest
from pydantic import BaseModel

from kubetune.api.admission import ACCESS_RULES, access_refusals, judged_cel
from kubetune.api.job import FineTuneJob, FineTuneJobSpec
from kubetune.api.platform_policy import PlatformPolicy, PolicyError, policy_problems
from kubetune.api.platform_rules import platform_refusals
from kubetune.api.training import SecretKeyRef
from tests.support.builders import a_job
from tests.support.kubernetes_cel import NAMESPACE, USER, Authorizer, activation, cel, cel_refusals

POLICY_NAME, POLICY_NAMESPACE = "kt-kubetune-platform-policy", "kubetune-system"


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
#: The claims ON_CLAIMS writes (checkpoints, output): their author must be allowed to update them.
WRITTEN = {"scratch", "results"}
PVC = "persistentvolumeclaims"


def _may(verb: str, resource: str, *names: str) -> set[tuple[str, str, str]]:
    return {(verb, resource, name) for name in names}


#: What the `view` role gives on every claim, and what `edit` gives on the written ones.
VIEWER = _may("get", PVC, *CLAIMS)
EDITOR = VIEWER | _may("update", PVC, *WRITTEN)

#: (spec, what the user may do, the fields refused in rule order)
ACCESS_CASES: list[tuple[dict[str, Any], set[tuple[str, str, str]], list[str]]] = [
    ({"model": MODEL, "dataset": {"train": "/data/t.jsonl"}}, _may("get", "secrets", "hf-token"), []),
    ({"model": MODEL, "dataset": {"train": "/data/t.jsonl"}}, set(), ["spec.model.tokenSecretRef"]),
    ({"model": MODEL, "dataset": {"train": "/data/t.jsonl"}}, _may("get", "secrets", "other"),
     ["spec.model.tokenSecretRef"]),
    ({"model": MODEL, "dataset": {"train": "/data/t.jsonl"}}, _may("update", "secrets", "hf-token"),
     ["spec.model.tokenSecretRef"]),
    ({"model": {"source": "hf://org/m"}, "dataset": {"train": "t.jsonl"}}, set(), []),
    (ON_CLAIMS, EDITOR, []),
    (ON_CLAIMS, VIEWER, ["spec.storage.checkpoints", "spec.storage.output"]),
    (ON_CLAIMS, _may("get", PVC, "models", "data") | _may("update", PVC, *WRITTEN), []),
    (ON_CLAIMS, EDITOR - {("update", PVC, "results")}, ["spec.storage.output"]),
    (ON_CLAIMS, _may("update", PVC, *CLAIMS), ["spec.model.source", "spec.dataset.train", "spec.dataset.validation"]),
    (
        ON_CLAIMS,
        _may("get", PVC, "data"),
        ["spec.model.source", "spec.storage.checkpoints", "spec.storage.output"],
    ),
    (ON_CLAIMS, _may("get", "secrets", *CLAIMS) | _may("update", "secrets", *CLAIMS), ["spec.model.source",
     "spec.dataset.train", "spec.dataset.validation", "spec.storage.checkpoints", "spec.storage.output"]),
    ({"model": {"source": "pvc://models"}, "dataset": {"train": "t.jsonl"}}, set(), ["spec.model.source"]),
    ({"model": {"source": "hf://o/m"}, "dataset": {"train": "pvc://shared/t.jsonl"},
      "storage": {"checkpoints": "pvc://shared/ckpt"}}, _may("get", PVC, "shared"), ["spec.storage.checkpoints"]),
    ({**ON_CLAIMS, **REFERENCE}, EDITOR, ["spec.evaluation.referenceModel.tokenSecretRef"]),
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
    spec: dict[str, Any], grants: set[tuple[str, str, str]], refused: list[str]
) -> None:
    for form in _wire_forms(spec):
        python = access_refusals(form, USER, NAMESPACE, lambda verb, resource, name: (verb, resource, name) in grants)
        cel = cel_refusals("authorAccess", activation(form, authorizer=Authorizer(frozenset(grants))))
        assert cel == python
        assert [message.split(":")[0] for message in python] == refused


def test_an_author_access_refusal_names_field_rule_user_and_object() -> None:
    (message,) = access_refusals({"model": MODEL}, USER, NAMESPACE, lambda *_: False)
    assert message == (
        'spec.model.tokenSecretRef: refused by rule "author-may-get-secrets": user '
        f'"{USER}" may not get Secret "hf-token" in namespace "team-a"; the pods of the job would receive its keys'
    )
    (claim,) = access_refusals({"dataset": {"train": "pvc://data/t.jsonl"}}, USER, NAMESPACE, lambda *_: False)
    assert claim == (
        'spec.dataset.train: refused by rule "author-may-get-claims": user '
        f'"{USER}" may not get PersistentVolumeClaim "data" in namespace "team-a"; the pods of the job would mount it'
    )


def test_a_claim_the_job_writes_needs_update_not_only_get() -> None:
    """`view` grants get on every claim: a viewer must not have the job write into (and prune) one."""
    spec = {"storage": {"checkpoints": "pvc://scratch/ckpt", "output": "pvc://results/out"}}
    checkpoints, output = access_refusals(spec, USER, NAMESPACE, lambda verb, *_: verb == "get")
    assert checkpoints == (
        'spec.storage.checkpoints: refused by rule "author-may-update-claims": user '
        f'"{USER}" may not update PersistentVolumeClaim "scratch" in namespace "team-a"; the pods of the job would '
        "mount it read-write and write into it (checkpoints, the export, pruning)"
    )
    assert output.startswith('spec.storage.output: refused by rule "author-may-update-claims": ')
    assert 'may not update PersistentVolumeClaim "results"' in output
    assert access_refusals(spec, USER, NAMESPACE, lambda verb, *_: verb == "update") == []


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
    assert len(ACCESS_RULES) == 9


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


def _asking(distributed: dict[str, Any], **resources: dict[str, Any]) -> dict[str, Any]:
    """A job with `spec.resources`, which the operator passes into every worker pod as it is."""
    return _spec(distributed=distributed, resources=resources)


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
    # accelerators asked for in spec.resources count too, whatever the accelerator (the pods get them)
    (_asking(CPU, limits={"nvidia.com/gpu": 64}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"nvidia.com/gpu": 64}), {"maxGangProcesses": "8"}, []),
    (_asking(CPU, limits={"nvidia.com/gpu": "4"}), POLICY, []),
    (_asking(CPU, limits={"nvidia.com/gpu": "5"}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, requests={"nvidia.com/gpu": 5}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, requests={"nvidia.com/gpu": 1}, limits={"nvidia.com/gpu": 5}), POLICY, ["max-gpus-per-job"]),
    (_asking({"workers": 3, **CPU}, limits={"amd.com/gpu": 2}), POLICY, ["max-gpus-per-job"]),
    (_asking({"workers": 2, **CPU}, limits={"amd.com/gpu": 2}), POLICY, []),
    (_asking(CPU, limits={"nvidia.com/mig-1g.5gb": 7}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"habana.ai/gaudi": 8}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"google.com/tpu": 8}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"gpu.intel.com/i915": 8}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"intel.com/gaudi": 8}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"aws.amazon.com/neuroncore": 8}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"example.com/gpu-shared": 8}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"example.com/fpga": 8, "cpu": 64, "memory": "512Gi"}), POLICY, []),
    (_asking(CPU, limits={"nvidia.com/gpu": "2", "amd.com/gpu": "3"}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"nvidia.com/gpu": "2"}, requests={"amd.com/gpu": 2}), POLICY, []),
    (_asking(CPU, limits={"nvidia.com/gpu": "1k"}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"nvidia.com/gpu": "4e0"}), POLICY, []),
    (_asking(CPU, limits={"nvidia.com/gpu": "3500m"}), POLICY, []),
    (_asking(CPU, limits={"nvidia.com/gpu": "4100m"}), POLICY, ["max-gpus-per-job"]),
    (_asking(CPU, limits={"nvidia.com/gpu": "1e30"}), POLICY, ["max-gpus-per-job"]),
    (_asking({"workers": 256, **CPU}, limits={"nvidia.com/gpu": "1e30"}, requests={"amd.com/gpu": "9Ei"}),
     {"maxGPUsPerJob": "999999999"}, ["max-gpus-per-job"]),
    # an nvidia-gpu job's pods get processesPerWorker nvidia.com/gpu whatever spec.resources says, and the rest
    (_asking({"workers": 2, "processesPerWorker": 2}, limits={"nvidia.com/gpu": 64}), POLICY, []),
    (_asking({"workers": 2, "processesPerWorker": 2}, limits={"nvidia.com/mig-1g.5gb": 1}), POLICY,
     ["max-gpus-per-job"]),
    (_asking({"workers": 1, "accelerator": "nvidia-gpu"}, requests={"amd.com/gpu": 4}), POLICY,
     ["max-gpus-per-job"]),
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
        assert cel_refusals("platform", activation(form, params=params)) == python
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


def test_a_gpu_refusal_names_what_each_worker_asks_for() -> None:
    policy = PlatformPolicy.from_data(POLICY)
    (cpu,) = platform_refusals(_asking({"workers": 2, **CPU}, limits={"nvidia.com/gpu": 64}), policy)
    assert cpu == (
        'spec.distributed.workers: refused by rule "max-gpus-per-job": 2 workers x 64 GPUs per worker = 128 GPUs, '
        "above the maxGPUsPerJob of the platform policy (4); per worker: 64 nvidia.com/gpu (spec.resources)"
    )
    spec = _asking({"workers": 2, "processesPerWorker": 2}, limits={"nvidia.com/gpu": 9, "amd.com/gpu": "1"})
    (gpu,) = platform_refusals(spec, policy)
    assert gpu.endswith(
        "2 workers x 3 GPUs per worker = 6 GPUs, above the maxGPUsPerJob of the platform policy (4); "
        "per worker: 2 nvidia.com/gpu (processesPerWorker), 1 amd.com/gpu (spec.resources)"
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
    refusals = cel_refusals("platform", activation(_spec(distributed=CPU), params=params))
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
    assert bool(cel(judged_cel(), activation(new, old))) == judged
