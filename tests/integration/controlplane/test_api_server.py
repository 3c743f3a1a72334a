"""The FineTuneJob API on a real API server (tests/support/controlplane.py): what users meet with kubectl.

- the CRD and every example apply with kubectl's default validation (the server's OpenAPI document);
- `kubectl get ftj` shows the printer columns with real values, `kubectl explain` prints the field docs;
- bad manifests are refused by the server itself (OpenAPI schema and CEL), naming the field;
- the transition rule freezes the spec of a started job and still allows `suspend`;
- the garbage collector removes a job's children after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.builders import a_job
from tests.support.controlplane import ADMIN_TOKEN, KUBERNETES_VERSION, ControlPlane
from tests.support.kubeapi import KubeApi
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
]


@pytest.mark.parametrize(("mistake", "field"), REFUSED_BY_THE_SERVER, ids=[f for _, f in REFUSED_BY_THE_SERVER])
def test_the_server_refuses_bad_manifests_naming_the_field(
    control_plane: ControlPlane, namespace: str, mistake: dict[str, Any], field: str
) -> None:
    done = apply(control_plane, namespace, a_job("bad").spec(mistake).build(), "--dry-run=server")
    assert done.returncode != 0, done.stdout
    assert field in done.stderr, done.stderr


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
