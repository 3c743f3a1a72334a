"""The chart's admission policies on the real API server: a FineTuneJob gets its author no more than they
could read themselves, and keeps to the platform policy.

Two users made here, ServiceAccounts with tokens from the TokenRequest API (real authentication, no
impersonation): both may create and patch FineTuneJobs; only `alice` may get Secret `hf-token` and claim
`models`, and update claim `scratch`, which jobs write their checkpoints to; `bob` may only get `scratch`
(as the built-in `view` role lets anyone get every claim) (RBAC, by resource name). The author-access policy is the one the session's chart installed,
cluster-wide. The platform policy is the chart's too, rendered with a policy in its values; its ConfigMap
and binding are applied into and scoped to this test's namespace only (a namespaceSelector), so no other
test meets its limits.

A new binding or parameter takes a moment to reach the API server's admission (its informers): each
wait polls a dry-run create of a job that must become refused, never a fixed sleep.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.realcluster import RealCluster
from tests.support.apiserver import JOBS
from tests.support.builders import JobBuilder, a_job
from tests.support.chart import of_kind, render
from tests.support.kubeapi import KubeApi, api_path
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(120)]

NAMESPACE = "admission"
SECRET, CLAIM = "hf-token", "models"
#: The claim the jobs here write their checkpoints to.
SCRATCH = "scratch"
POLICIES = "admissionregistration.k8s.io/v1/validatingadmissionpolicies"
BINDINGS = "admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
#: What the platform policy allows, as a platform team writes it in the chart's values.
PLATFORM = {"create": True, "allowedImages": ["ghcr.io/kubetune/"], "maxGangProcesses": 8, "maxGPUsPerJob": 8}
#: How long the API server may take to start enforcing a new binding or parameter (seconds).
POLICY_PROPAGATION = 30


def _rbac(namespace: str) -> list[tuple[str, dict[str, Any]]]:
    """(resource, body): both users author jobs; only alice may get the Secret and the claim and update the
    scratch claim; bob may only get the scratch claim."""
    rbac = "rbac.authorization.k8s.io/v1"
    account = {"kind": "ServiceAccount", "namespace": namespace}
    author = [{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs"], "verbs": ["create", "get", "patch"]}]
    reader = [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": [CLAIM], "verbs": ["get"]},
        {
            "apiGroups": [""],
            "resources": ["persistentvolumeclaims"],
            "resourceNames": [SCRATCH],
            "verbs": ["get", "update"],
        },
    ]
    viewer = [
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": [SCRATCH], "verbs": ["get"]}
    ]
    role_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role"}
    return [
        ("v1/serviceaccounts", {"metadata": {"name": "alice"}}),
        ("v1/serviceaccounts", {"metadata": {"name": "bob"}}),
        (f"{rbac}/roles", {"metadata": {"name": "author"}, "rules": author}),
        (f"{rbac}/roles", {"metadata": {"name": "reader"}, "rules": reader}),
        (f"{rbac}/roles", {"metadata": {"name": "viewer"}, "rules": viewer}),
        (f"{rbac}/rolebindings", {"metadata": {"name": "author"}, "roleRef": role_ref | {"name": "author"},
                                  "subjects": [account | {"name": "alice"}, account | {"name": "bob"}]}),
        (f"{rbac}/rolebindings", {"metadata": {"name": "reader"}, "roleRef": role_ref | {"name": "reader"},
                                  "subjects": [account | {"name": "alice"}]}),
        (f"{rbac}/rolebindings", {"metadata": {"name": "viewer"}, "roleRef": role_ref | {"name": "viewer"},
                                  "subjects": [account | {"name": "bob"}]}),
        ("v1/secrets", {"metadata": {"name": SECRET}, "stringData": {"token": "hf_not_a_real_token"}}),
    ]  # fmt: skip


def _platform_objects(namespace: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The chart's platform policy ConfigMap and binding, rendered from `PLATFORM`, moved into `namespace`."""
    objects = render({"admission": {"platformPolicy": PLATFORM}})
    (config_map,) = of_kind(objects, "ConfigMap")
    (binding,) = [b for b in of_kind(objects, "ValidatingAdmissionPolicyBinding") if "paramRef" in b["spec"]]
    config_map["metadata"] = {"name": "platform-policy", "namespace": namespace}
    binding["metadata"] = {"name": f"{namespace}-platform"}
    binding["spec"]["paramRef"] |= {"name": "platform-policy", "namespace": namespace}
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    return [("v1/configmaps", namespace, config_map), (BINDINGS, None, binding)]


@pytest.fixture(scope="module")
def users(cluster: RealCluster) -> Iterator[dict[str, KubeApi]]:
    """alice and bob as API clients, with the platform policy in force in this test's namespace."""
    cluster.ensure_namespace(NAMESPACE)
    cluster.ensure_claim(NAMESPACE, CLAIM)
    cluster.ensure_claim(NAMESPACE, SCRATCH)
    for resource, body in _rbac(NAMESPACE):
        code, answer = cluster.api.create(resource, NAMESPACE, body)
        assert code < 300 or code == 409, (resource, code, answer)
    platform = _platform_objects(NAMESPACE)
    for resource, namespace, body in platform:
        code, answer = cluster.api.create(resource, namespace, body)
        assert code < 300, (resource, code, answer)
    try:
        yield {name: _client(cluster, name) for name in ("alice", "bob")}
    finally:
        cluster.api.delete(BINDINGS, None, platform[1][2]["metadata"]["name"])


def _client(cluster: RealCluster, account: str) -> KubeApi:
    token = cluster.kubectl_ok("create", "token", account, "-n", NAMESPACE, "--duration=1h").strip()
    return KubeApi(cluster.url, token, cluster.control_plane.ca_file)


def _job(name: str) -> JobBuilder:
    """A one-worker CPU job on the hub (no claim) reading its data from a path in the image."""
    return a_job(name).train("/data/train.jsonl").accelerator("cpu")


def _create(user: KubeApi, job: JobBuilder, dry_run: bool = False) -> tuple[int, dict[str, Any]]:
    path = api_path(JOBS, NAMESPACE) + ("?dryRun=All" if dry_run else "")
    return user.request("POST", path, job.in_namespace(NAMESPACE).build())


def _refusal(user: KubeApi, job: JobBuilder) -> str:
    """The API server's refusal of `job` from `user` once the policies are in force (dry run: nothing stored)."""

    def refused() -> str:
        code, answer = _create(user, job, dry_run=True)
        assert code >= 400, f"still admitted (HTTP {code})"
        return f"HTTP {code}: {answer.get('message', answer)}"

    return eventually(refused, timeout=POLICY_PROPAGATION, message=f"{job.name} to be refused")


WITH_SECRET = _job("with-secret").model("hf://org/model", tokenSecretRef={"name": SECRET, "key": "token"})
ON_CLAIM = _job("on-claim").train(f"pvc://{CLAIM}/train.jsonl")
WRITES_SCRATCH = _job("writes-scratch").storage(f"pvc://{SCRATCH}/checkpoints")


def test_a_job_naming_a_secret_its_author_may_not_read_is_refused(users: dict[str, KubeApi]) -> None:
    refusal = _refusal(users["bob"], WITH_SECRET)
    assert refusal.startswith("HTTP 403"), refusal
    assert 'spec.model.tokenSecretRef: refused by rule "author-may-get-secrets"' in refusal
    assert f'user "system:serviceaccount:{NAMESPACE}:bob" may not get Secret "{SECRET}"' in refusal


def test_a_job_mounting_a_claim_its_author_may_not_read_is_refused(users: dict[str, KubeApi]) -> None:
    refusal = _refusal(users["bob"], ON_CLAIM)
    assert 'spec.dataset.train: refused by rule "author-may-get-claims"' in refusal, refusal
    assert f'PersistentVolumeClaim "{CLAIM}"' in refusal


def test_a_job_writing_a_claim_its_author_may_only_get_is_refused(users: dict[str, KubeApi]) -> None:
    """bob may get `scratch` (as `view` lets anyone get every claim), but the job would write into it."""
    refusal = _refusal(users["bob"], WRITES_SCRATCH)
    assert refusal.startswith("HTTP 403"), refusal
    assert 'spec.storage.checkpoints: refused by rule "author-may-update-claims"' in refusal
    assert f'user "system:serviceaccount:{NAMESPACE}:bob" may not update PersistentVolumeClaim "{SCRATCH}"' in refusal


def test_an_image_outside_the_platform_policy_is_refused(users: dict[str, KubeApi]) -> None:
    refusal = _refusal(users["alice"], _job("evil-image").spec(image="docker.io/someone/trainer:1"))
    assert refusal.startswith("HTTP 422"), refusal
    assert 'spec.image: refused by rule "allowed-images": image "docker.io/someone/trainer:1"' in refusal


def test_a_gang_larger_than_the_platform_policy_allows_is_refused(users: dict[str, KubeApi]) -> None:
    refusal = _refusal(users["alice"], _job("too-large").workers(3).processes(3))
    assert 'spec.distributed.workers: refused by rule "max-gang-processes": 3 workers x 3 processes' in refusal
    assert "maxGangProcesses of the platform policy (8)" in refusal


def test_gpus_a_cpu_job_asks_for_in_its_resources_count_toward_the_platform_limit(users: dict[str, KubeApi]) -> None:
    """The operator passes `spec.resources` into every pod: `accelerator: cpu` does not make them free."""
    job = _job("cpu-with-gpus").resources(limits={"nvidia.com/gpu": "64"}, requests={"amd.com/gpu": 2})
    refusal = _refusal(users["alice"], job)
    assert refusal.startswith("HTTP 422"), refusal
    assert (
        'spec.distributed.workers: refused by rule "max-gpus-per-job": 1 workers x 66 GPUs per worker = 66 GPUs, '
        "above the maxGPUsPerJob of the platform policy (8); per worker: "
    ) in refusal
    assert "64 nvidia.com/gpu (spec.resources)" in refusal and "2 amd.com/gpu (spec.resources)" in refusal


def test_the_reader_is_admitted_and_the_operator_runs_the_job(cluster: RealCluster, users: dict[str, KubeApi]) -> None:
    """alice may read both and update the claim the job writes: her job is stored and the operator starts its
    gang. bob may then suspend and resume it (not judged), but not change its spec: that would judge him on her
    Secret."""
    job = (
        ON_CLAIM.storage(f"pvc://{SCRATCH}/checkpoints")
        .model("hf://org/model", tokenSecretRef={"name": SECRET, "key": "token"})
        .spec(image="ghcr.io/kubetune/trainer:0.1.0", suspend=True)
    )
    _refusal(users["bob"], job)  # the policies are in force: alice's admission below is their verdict
    code, answer = _create(users["alice"], job)
    assert code == 201, answer
    name = job.name
    code, answer = users["bob"].patch(JOBS, NAMESPACE, name, {"spec": {"image": "ghcr.io/kubetune/trainer:0.2.0"}})
    assert code == 403 and "spec.model.tokenSecretRef" in answer["message"], (code, answer)
    code, answer = users["bob"].patch(JOBS, NAMESPACE, name, {"spec": {"suspend": False}})
    assert code == 200, answer
    pods = eventually(lambda: cluster.pods(NAMESPACE, name), timeout=60, message=f"the pods of {name}")
    container = pods[0]["spec"]["containers"][0]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "token"}}} in container["env"]
    cluster.delete(JOBS, NAMESPACE, name)


def _type_checked(cluster: RealCluster, name: str) -> dict[str, Any]:
    policy = cluster.api.get(POLICIES, None, name)
    assert policy is not None, f"ValidatingAdmissionPolicy {name} is not installed"
    status = policy.get("status") or {}
    assert status.get("observedGeneration") == policy["metadata"]["generation"], f"{name} not type-checked yet"
    return status


@pytest.mark.parametrize("policy", ["kt-kubetune-author-access", "kt-kubetune-platform"])
def test_the_api_server_type_checks_every_expression_without_a_warning(cluster: RealCluster, policy: str) -> None:
    """The API server checks each expression against the FineTuneJob and ConfigMap schemas; a mistyped
    field or a wrong overload would show here as a warning (and fail at admission)."""
    status = eventually(lambda: _type_checked(cluster, policy), timeout=POLICY_PROPAGATION, message=policy)
    assert (status.get("typeChecking") or {}).get("expressionWarnings", []) == [], status
