"""The chart's admission policies: the generated CEL wrapped as ValidatingAdmissionPolicies with their
bindings, the platform policy ConfigMap rendered from values, and that ConfigMap read back by
`kubetune validate --policy` as the same policy (one file for the API server and for CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from kubetune.api.admission import policy_specs
from kubetune.api.platform_policy import PlatformPolicy, load_policy
from tests.support.chart import NAMESPACE, PLATFORM_POLICY, of_kind, one, render, render_files

pytestmark = pytest.mark.timeout(60)

POLICY = "ValidatingAdmissionPolicy"
BINDING = "ValidatingAdmissionPolicyBinding"


def _named(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in of_kind(objects, kind)}


def test_defaults_install_both_policies_bound_and_no_platform_policy() -> None:
    objects = render()
    policies, bindings = _named(objects, POLICY), _named(objects, BINDING)
    assert set(policies) == set(bindings) == {"kt-kubetune-author-access", "kt-kubetune-platform"}
    assert policies["kt-kubetune-author-access"]["spec"] == policy_specs()["authorAccess"]
    assert policies["kt-kubetune-platform"]["spec"] == policy_specs()["platform"]
    assert all(b["spec"]["policyName"] == name and b["spec"]["validationActions"] == ["Deny"]
               for name, b in bindings.items())  # fmt: skip
    assert "paramRef" not in bindings["kt-kubetune-author-access"]["spec"]
    assert bindings["kt-kubetune-platform"]["spec"]["paramRef"] == {
        "name": "kt-kubetune-platform-policy",
        "namespace": NAMESPACE,
        "parameterNotFoundAction": "Allow",
    }
    assert of_kind(objects, "ConfigMap") == []


def test_admission_can_be_switched_off_or_made_to_warn() -> None:
    assert of_kind(render({"admission": {"enabled": False, "platformPolicy": {"create": True}}}), POLICY) == []
    warned = render({"admission": {"validationActions": ["Warn", "Audit"], "platformPolicy": {"whenMissing": "Deny"}}})
    assert all(b["spec"]["validationActions"] == ["Warn", "Audit"] for b in of_kind(warned, BINDING))
    platform = _named(warned, BINDING)["kt-kubetune-platform"]
    assert platform["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny"


def test_the_rendered_policy_is_the_file_kubetune_validate_reads(tmp_path: Path) -> None:
    text = render_files({"admission": {"platformPolicy": PLATFORM_POLICY}})["kubetune/templates/platform-policy.yaml"]
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    assert load_policy(str(path)) == PlatformPolicy(
        images=("ghcr.io/acme/trainer", "registry.example.com/ml/", "sha256:abc123"),
        priority_classes=("team-low", "team-high"),
        toleration_keys=(),
        node_selector_keys=("pool",),
        max_gang_processes=16,
        max_gpus=8,
    )


def test_unset_keys_are_left_out_and_the_name_can_be_chosen() -> None:
    values = {"admission": {"platformPolicy": {"create": True, "name": "platform-rules", "maxGPUsPerJob": 0}}}
    objects = render(values)
    config_map = one(objects, "ConfigMap")
    assert config_map["metadata"] == config_map["metadata"] | {"name": "platform-rules", "namespace": NAMESPACE}
    assert config_map["data"] == {"maxGPUsPerJob": "0"}
    assert _named(objects, BINDING)["kt-kubetune-platform"]["spec"]["paramRef"]["name"] == "platform-rules"
    assert one(render({"admission": {"platformPolicy": {"create": True}}}), "ConfigMap")["data"] == {}


@pytest.mark.parametrize(
    "policy",
    [
        {"allowedImages": ["a,b"]},
        {"allowedImages": "ghcr.io/acme/"},
        {"maxGangProcesses": -1},
        {"maxGangProcesses": "8"},
        {"whenMissing": "Ignore"},
        {"allowedImage": []},
    ],
)
def test_the_values_schema_refuses_a_policy_the_policies_could_not_read(policy: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        render({"admission": {"platformPolicy": policy}})


def test_the_generated_file_is_what_the_template_reads() -> None:
    chart_file = Path(__file__).resolve().parents[1] / "files" / "admission.yaml"
    assert yaml.safe_load(chart_file.read_text()) == policy_specs()
