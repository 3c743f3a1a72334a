"""The output-path rule on a real API server: it accepts the CRD (the rules' estimated cost fits its
budget), Kubernetes' CEL and the models agree on every row of the parity table and on paths written
plainly or not, and a refusal names the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api.job import FineTuneJob
from kubetune.api.test_cel_parity import PATH_CASES
from tests.support.builders import a_job
from tests.support.controlplane import ADMIN_TOKEN, ControlPlane
from tests.support.kubeapi import KubeApi, api_path

pytestmark = pytest.mark.timeout(120)

JOBS = "kubetune.io/v1alpha1/finetunejobs"
NAMESPACE = "output-paths"
#: `pvc://` paths not written plainly (RE2 on the server, Python's `re` in the models), beside the table.
PLAIN_PATH_CASES: list[dict[str, Any]] = [
    {"storage": {"output": "pvc://c/../out"}},
    {"storage": {"checkpoints": "pvc://c/run/.."}},
    {"storage": {"checkpoints": "pvc://c/run..", "output": "pvc://c/..out"}},
    {"storage": {"checkpoints": "pvc://c//run"}},
    {"storage": {"checkpoints": "pvc://c/run/", "output": "pvc://c/./run/out"}},
    {"model": {"source": "pvc://m/a/../b"}},
    {"model": {"source": "../models/b"}},
    {"dataset": {"train": "pvc://d/./t.jsonl"}},
    {"dataset": {"train": "../data//t.jsonl"}},
]


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> KubeApi:
    client = KubeApi(control_plane.url, ADMIN_TOKEN, control_plane.ca_file)
    code, body = client.create("v1/namespaces", None, {"metadata": {"name": NAMESPACE}})
    assert code < 300 or code == 409, body
    return client


def _dry_run(api: KubeApi, manifest: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return api.request("POST", api_path(JOBS, NAMESPACE) + "?dryRun=All&fieldValidation=Strict", manifest)


def _models_accept(manifest: dict[str, Any]) -> bool:
    try:
        FineTuneJob.model_validate(manifest)
    except ValidationError:
        return False
    return True


def test_the_server_and_the_models_agree_on_every_path_case(api: KubeApi) -> None:
    disagreements, refused = [], 0
    cases = PATH_CASES + PLAIN_PATH_CASES
    for number, parts in enumerate(cases):
        manifest = a_job(f"paths-{number}").spec(parts).build()
        code, body = _dry_run(api, manifest)
        refused += code >= 300
        if (code < 300) != _models_accept(manifest):
            disagreements.append((parts, code, body.get("message")))
    assert disagreements == []
    assert 0 < refused < len(cases), "the table must hold accepted and refused cases"


def test_the_servers_refusal_names_both_fields(api: KubeApi) -> None:
    manifest = a_job("paths-inside").spec(storage={"checkpoints": "pvc://c/run", "output": "pvc://c/run/model"}).build()
    code, body = _dry_run(api, manifest)
    assert code == 422, body
    assert "spec.storage.output" in body["message"] and "`storage.checkpoints`" in body["message"], body
