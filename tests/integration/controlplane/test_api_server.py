"""The FineTuneJob API on a real API server (tests/support/controlplane.py): what users meet with kubectl.

- the CRD and every example apply with kubectl's default validation (the server's OpenAPI document);
- `kubectl get ftj` shows the printer columns with real values, `kubectl explain` prints the field docs;
- bad manifests are refused by the server itself (OpenAPI schema and CEL), naming the field, and by the
  models; the models and the server agree on Kubernetes quantities (the parity test of the quantity rules);
- the pods of a job the server accepts are accepted too, where a ResourceQuota requires requests;
- the transition rule freezes the spec of a started job and still allows `suspend`;
- the garbage collector removes a job's children after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetune.api.job import FineTuneJob
from kubetune.operator.builders import BuildSettings, build_worker_pod
from tests.support.builders import a_job, deep_merge
from tests.support.controlplane import ADMIN_TOKEN, KUBERNETES_VERSION, ControlPlane
from tests.support.kubeapi import KubeApi, api_path
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]
JOBS = "kubetune.io/v1alpha1/finetunejobs"


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> KubeApi:
    return KubeApi(control_plane.url, ADMIN_TOKEN, control_plane.ca_file)


@pytest.fixture(scope="module")
def namespace(api: KubeApi) -> str:
    name = "api-server"
    code, body = api.create("v1/namespaces", None, {"metadata": {"name": name}})
    assert code < 300 or code == 409, body
    return name


def apply(plane: ControlPlane, namespace: str, document: dict[str, Any], *flags: str) -> Any:
    return plane.kubectl("apply", "-n", namespace, "-f", "-", *flags, input=yaml.safe_dump(document))


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_applies_with_default_validation(
    control_plane: ControlPlane, api: KubeApi, namespace: str, example: Path
) -> None:
    for document in yaml.safe_load_all(example.read_text()):
        own = document["metadata"].get("namespace")
        if own:  # the example names its namespace: it exists in the user's cluster
            api.create("v1/namespaces", None, {"metadata": {"name": own}})
    target = [] if "namespace:" in example.read_text() else ["-n", namespace]
    done = control_plane.kubectl("apply", "--dry-run=server", *target, "-f", str(example))
    assert done.returncode == 0, done.stderr
    assert "created (server dry run)" in done.stdout, done.stdout


def test_kubectl_get_shows_the_printer_columns(control_plane: ControlPlane, api: KubeApi, namespace: str) -> None:
    created = apply(control_plane, namespace, a_job("columns").build())
    assert created.returncode == 0, created.stderr
    status = {"phase": "Running", "progress": {"step": 5, "totalSteps": 10, "percent": 50}, "restarts": 1,
              "metrics": {"trainLoss": 1.25, "evalLoss": 1.5}}  # fmt: skip
    code, body = api.patch(JOBS, namespace, "columns", {"status": status}, "status")
    assert code == 200, body
    table = control_plane.kubectl("get", "ftj", "columns", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "TRAIN", "LOSS", "EVAL", "LOSS", "RESTARTS", "AGE"]
    assert table[1].split()[:6] == ["columns", "Running", "50", "1.25", "1.5", "1"], table


def test_kubectl_explain_prints_the_field_docs(control_plane: ControlPlane) -> None:
    done = control_plane.kubectl("explain", "finetunejob.spec.hyperparameters")
    assert done.returncode == 0, done.stderr
    assert "learningRate" in done.stdout and "microBatchSize" in done.stdout, done.stdout


#: (the mistake, the field the server's refusal names)
REFUSED_BY_THE_SERVER = [
    ({"distributed": {"workers": 0}}, "spec.distributed.workers"),
    ({"hyperparameters": {"learningRate": 0}}, "spec.hyperparameters.learningRate"),
    ({"earlyStopping": {"patience": 2}}, "earlyStopping"),
    ({"method": {"type": "full", "lora": {"rank": 4}}}, "lora"),
    ({"storage": {"checkpoints": "/tmp/checkpoints"}}, "spec.storage.checkpoints"),
    ({"distributed": {"zeroStage": 0, "offloadOptimizer": True}}, "offloadOptimizer"),
    ({"retryPolicy": {"maxRestarts": -1}}, "spec.retryPolicy.maxRestarts"),
    ({"bogus": True}, "bogus"),
    ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits[memory]"),
    ({"resources": {"limits": {"memory": "1.2.3"}}}, "spec.resources.limits[memory]"),
    ({"resources": {"requests": {"cpu": "-1"}}}, "spec.resources.requests[cpu]"),
    ({"resources": {"requests": {"cpu": 1.5}}}, "spec.resources.requests.cpu"),
    ({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "spec.resources.requests"),
    ({"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1G"}}}, "spec.resources.requests"),
    ({"scheduling": {"tolerations": [{"operator": "Equal"}]}}, "spec.scheduling.tolerations[0].operator"),
    (
        {"scheduling": {"tolerations": [{"key": "dedicated", "operator": "Exists", "value": "ml"}]}},
        "spec.scheduling.tolerations[0].value",
    ),
    (
        {"scheduling": {"tolerations": [{"key": "dedicated", "tolerationSeconds": 30}]}},
        "spec.scheduling.tolerations[0].tolerationSeconds",
    ),
    (
        {"scheduling": {"tolerations": [{"key": "dedicated", "effect": "Never"}]}},
        "spec.scheduling.tolerations[0].effect",
    ),
    ({"scheduling": {"tolerations": [{"key": "a/b/c", "operator": "Exists"}]}}, "spec.scheduling.tolerations[0].key"),
    ({"scheduling": {"tolerations": [{"key": "dedicated", "value": "a b"}]}}, "spec.scheduling.tolerations[0].value"),
    ({"scheduling": {"nodeSelector": {"accelerator type": "a100"}}}, "spec.scheduling.nodeSelector"),
    ({"scheduling": {"nodeSelector": {"x" * 64: "a100"}}}, "spec.scheduling.nodeSelector"),
    ({"scheduling": {"nodeSelector": {"disk": "-ssd"}}}, "spec.scheduling.nodeSelector.disk"),
    ({"scheduling": {"nodeSelector": {"disk": "s" * 64}}}, "spec.scheduling.nodeSelector.disk"),
    ({"scheduling": {"queueName": "team queue"}}, "spec.scheduling.queueName"),
    ({"scheduling": {"queueName": "q" * 64}}, "spec.scheduling.queueName"),
    ({"scheduling": {"priorityClassName": "High"}}, "spec.scheduling.priorityClassName"),
]


@pytest.mark.parametrize(("mistake", "field"), REFUSED_BY_THE_SERVER, ids=[f for _, f in REFUSED_BY_THE_SERVER])
def test_the_server_refuses_bad_manifests_naming_the_field(
    control_plane: ControlPlane, namespace: str, mistake: dict[str, Any], field: str
) -> None:
    manifest = a_job("bad").spec(mistake).build()
    done = apply(control_plane, namespace, manifest, "--dry-run=server")
    assert done.returncode != 0, done.stdout
    assert field in done.stderr, done.stderr
    with pytest.raises(ValidationError):  # and `kubetune validate` refuses it as well
        FineTuneJob.model_validate(manifest)


@pytest.mark.parametrize(
    "mistake",
    [
        {"earlyStopping": {"mode": "minimum"}, "evaluation": {}},
        {"distributed": {"precision": "bfloat16"}},
        {"scheduling": {"tolerations": [{"key": "dedicated", "effect": "NoScheduleAtAll"}]}},
    ],
    ids=["mode", "precision", "effect"],
)
def test_a_wrong_enum_value_is_unsupported_not_too_long(
    control_plane: ControlPlane, namespace: str, mistake: dict[str, Any]
) -> None:
    done = apply(control_plane, namespace, a_job("bad").spec(mistake).build(), "--dry-run=server")
    assert "Unsupported value" in done.stderr and "Too long" not in done.stderr, done.stderr


def dry_run(api: KubeApi, resource: str, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return api.request("POST", api_path(resource, namespace) + "?dryRun=All&fieldValidation=Strict", body)


#: Quantities where Kubernetes' parser has quirks, beside common ones: the models must say what the server
#: says (CEL's isQuantity, the schema's int-or-string, the request <= limit rule).
QUANTITIES: list[Any] = [
    "64Gi", "500m", "1e3", "1E3", "1.5", "8", 8, "0", ".5", "1.", "Mi", "+", "0e-10", "1.5Gi", "Ti", "1" * 64,
    "lots", "1.2.3", "", "1e", "1K", "1 Gi", " 1", "Pi", "e-10", "-1", -1, "-1Gi", "1e1.5", 1.5, True, "1" * 65,
]  # fmt: skip
#: (request, limit) pairs of one resource.
REQUESTS_AND_LIMITS: list[tuple[Any, Any]] = [
    ("1", "1"), (2, "2000m"), ("1G", "1Gi"), ("1.0000000001", "1.000000001"), ("1Ki", "1024"),
    ("2", "1"), ("1Gi", "1G"), ("1e3", "999"), (3, 2), ("1.000000002", "1.0000000011"),
]  # fmt: skip


def test_the_models_and_the_server_agree_on_every_quantity(api: KubeApi, namespace: str) -> None:
    """isQuantity is Kubernetes' own parser; pydantic uses a port of it. (cel-python has no quantity library,
    so this is the parity test of the quantity rules.)"""
    resources = [{"requests": {"cpu": value}} for value in QUANTITIES]
    resources += [{"requests": {"cpu": low}, "limits": {"cpu": high}} for low, high in REQUESTS_AND_LIMITS]
    disagreements = []
    for number, wanted in enumerate(resources):
        manifest = a_job(f"quantity-{number}").spec(resources=wanted).build()
        code, body = dry_run(api, JOBS, namespace, manifest)
        try:
            FineTuneJob.model_validate(manifest)
            models = True
        except ValidationError:
            models = False
        if (code < 300) != models:
            disagreements.append((wanted, code, body.get("message"), models))
    assert disagreements == []


#: Jobs the server accepts, whose worker pods must be accepted too: in a namespace whose ResourceQuota
#: requires cpu and memory requests (default requests), with every scheduling field set.
ACCEPTED_JOBS: list[dict[str, Any]] = [
    {},
    {"distributed": {"accelerator": "cpu"}},
    {"distributed": {"accelerator": "cpu"}, "resources": {"limits": {"memory": "512Mi"}}},
    {"resources": {"requests": {"cpu": "500m", "memory": "1e9"}, "limits": {"cpu": 2, "memory": "1G"}}},
    {
        "scheduling": {
            "nodeSelector": {"kubernetes.io/arch": "amd64", "pool": "A.b-c_9", "empty": ""},
            "tolerations": [
                {"operator": "Exists"},
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "ml", "effect": ""},
                {"key": "spot", "effect": "NoExecute", "tolerationSeconds": 60},
            ],
            "queueName": "team-a.queue_1",
            "priorityClassName": "kubetune-test.high",
        }
    },
]


def test_pods_of_jobs_the_server_accepts_are_accepted_where_quotas_require_requests(api: KubeApi) -> None:
    namespace = "quota-requires-requests"
    api.create("v1/namespaces", None, {"metadata": {"name": namespace}})
    api.create(
        "scheduling.k8s.io/v1/priorityclasses", None, {"metadata": {"name": "kubetune-test.high"}, "value": 1000}
    )
    quota = {"metadata": {"name": "requests"}, "spec": {"hard": {"requests.cpu": "1000", "requests.memory": "10Ti"}}}
    code, body = api.create("v1/resourcequotas", namespace, quota)
    assert code in (201, 409), body

    def counted() -> Any:  # admission uses a quota only once its controller has counted the namespace
        return (api.get("v1/resourcequotas", namespace, "requests") or {}).get("status", {}).get("hard")

    eventually(counted, 30, message="the quota controller to count the namespace")
    settings = BuildSettings(trainer_image="kubetune/trainer:test")
    for number, spec in enumerate(ACCEPTED_JOBS):
        manifest = a_job(f"pods-{number}").in_namespace(namespace).spec(spec).build()
        code, body = dry_run(api, JOBS, namespace, manifest)
        assert code == 201, body
        job = FineTuneJob.model_validate(deep_merge(manifest, {"metadata": {"uid": "0123-4567"}}))
        code, body = dry_run(api, "v1/pods", namespace, build_worker_pod(job, 1, 0, settings))
        assert code == 201, (spec, body.get("message"))
    pod = build_worker_pod(a_job("none").in_namespace(namespace).metadata(uid="0123-4567").to_job(), 1, 0, settings)
    del pod["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    code, body = dry_run(api, "v1/pods", namespace, pod)  # the control row: the quota does require them
    assert code == 403 and "requests.cpu" in body["message"], body.get("message")


def test_the_spec_of_a_started_job_is_frozen_but_suspend_is_allowed(api: KubeApi, namespace: str) -> None:
    code, body = api.create(JOBS, namespace, a_job("frozen").build())
    assert code == 201, body
    code, body = api.patch(JOBS, namespace, "frozen", {"status": {"startTime": "2026-01-01T00:00:00Z"}}, "status")
    assert code == 200, body
    code, body = api.patch(JOBS, namespace, "frozen", {"spec": {"hyperparameters": {"learningRate": 0.5}}})
    assert code == 422 and "spec" in body["message"], body
    code, body = api.patch(JOBS, namespace, "frozen", {"spec": {"suspend": True}})
    assert code == 200, body


def test_the_garbage_collector_removes_a_jobs_children(api: KubeApi, namespace: str) -> None:
    code, job = api.create(JOBS, namespace, a_job("collected").build())
    assert code == 201, job
    owner = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "collected",
             "uid": job["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    code, body = api.create(
        "v1/configmaps", namespace, {"metadata": {"name": "collected-config", "ownerReferences": [owner]}}
    )
    assert code == 201, body
    code, body = api.delete(JOBS, namespace, "collected")
    assert code == 200, body
    eventually(lambda: api.get("v1/configmaps", namespace, "collected-config") is None, 30, message="the collection")


def test_the_server_reports_the_pinned_version(api: KubeApi) -> None:
    code, body = api.request("GET", "/version")
    assert code == 200 and body["gitVersion"] == KUBERNETES_VERSION, json.dumps(body)
