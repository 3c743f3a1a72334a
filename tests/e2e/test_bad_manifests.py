"""Bad manifests are refused before anything is created.

Each row is a FineTuneJob with one mistake. `kubetune validate` (what a user or CI runs before applying)
must refuse it naming the field, and so must the real API server: the CRD's schema and CEL rules express
every rule of the models, quantities included, so no row is ever stored and nothing is created for it.
(The operator still re-validates what it reads, for an object stored without the CRD's validation:
tests/integration/operator/test_lifecycle.py covers that against the emulated API server.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.invocation import EXIT_BAD_INPUT
from kubetune.cli import main as kubetune
from tests.e2e.jobs import JOBS, Inputs, a_scenario, make_inputs
from tests.e2e.realcluster import RealCluster
from tests.support.kubeapi import api_path

pytestmark = [pytest.mark.timeout(60)]

NAMESPACE = "bad-manifests"

#: (job name, the mistake merged into a valid spec, text the refusal must contain; `a|b`: either)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("workers-zero", {"distributed": {"workers": 0}}, "workers"),
    ("zero-learning-rate", {"hyperparameters": {"learningRate": 0}}, "learningRate"),
    ("early-stop-without-eval", {"earlyStopping": {"patience": 2}}, "earlyStopping|early stopping"),
    ("lora-block-on-full", {"method": {"type": "full", "lora": {"rank": 4}}}, "lora"),
    ("checkpoints-not-on-a-pvc", {"storage": {"checkpoints": "/tmp/checkpoints"}}, "checkpoints"),
    ("unknown-field", {"bogus": True}, "bogus"),
    ("offload-without-zero", {"distributed": {"zeroStage": 0, "offloadOptimizer": True}}, "offloadOptimizer"),
    ("memory-not-a-quantity", {"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ("negative-max-restarts", {"retryPolicy": {"maxRestarts": -1}}, "maxRestarts"),
    ("request-over-limit", {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "requests"),
    ("toleration-without-key", {"scheduling": {"tolerations": [{"operator": "Equal"}]}}, "operator"),
]


def names(field: str, text: str) -> bool:
    return any(alternative in text for alternative in field.split("|"))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    # the files need not exist: nothing may get as far as reading them
    root = tmp_path_factory.mktemp("bad")
    return Inputs(model=root / "model", train=root / "train.jsonl", validation=root / "validation.jsonl")


def bad_manifest(name: str, mistake: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    """A valid scenario manifest with `mistake` merged in after validation (so it stays wrong)."""
    valid = a_scenario(name, inputs)
    valid.build(validate=True)
    return valid.spec(mistake).build()


@pytest.mark.parametrize(("name", "mistake", "field"), BAD, ids=[row[0] for row in BAD])
def test_validate_refuses(
    name: str, mistake: dict[str, Any], field: str, bad_inputs: Inputs, tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bad_manifest(name, mistake, bad_inputs)))
    assert kubetune(["validate", str(path)]) == EXIT_BAD_INPUT
    refusal = capsys.readouterr().err
    assert names(field, refusal) and str(path) in refusal, refusal


def test_the_server_refuses_every_row_before_anything_is_created(cluster: RealCluster, bad_inputs: Inputs) -> None:
    cluster.ensure_namespace(NAMESPACE)
    stored = []
    for name, mistake, field in BAD:
        # strict field validation, as kubectl asks for it: an unknown field is refused, not pruned
        path = api_path(JOBS, NAMESPACE) + "?fieldValidation=Strict"
        code, answer = cluster.request("POST", path, bad_manifest(name, mistake, bad_inputs))
        if code < 300:
            stored.append(name)
        else:  # the server refused it: schema or CEL, naming the field
            assert code in (400, 422) and names(field, answer["message"]), (name, code, answer)
    assert stored == [], stored
    assert cluster.objects(JOBS, NAMESPACE) == []
    for resource in ("v1/pods", "v1/services", "v1/configmaps"):
        assert [o for o in cluster.objects(resource, NAMESPACE) if o["metadata"]["name"] != "kube-root-ca.crt"] == []


def test_a_valid_manifest_passes_the_same_check(tmp_path: Path, tiny_model: Path, capsys: Any) -> None:
    """The control row: the base manifest of the table is valid, so each row fails for its mistake."""
    inputs = make_inputs(tmp_path, tiny_model)
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(a_scenario("good", inputs).build(validate=True)))
    assert kubetune(["validate", str(path)]) == 0, capsys.readouterr().err
