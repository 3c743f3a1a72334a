"""Two operator replicas by default, one leading through a Lease: what the chart renders for it (replicas,
rolling upgrade, disruption budget, anti-affinity, the Lease's Role, the flags) and what it refuses."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import pytest

from kubetune.cli import build_parser
from kubetune.operator.leader_election import LeaseTimings
from tests.support.chart import of_kind, one, render

pytestmark = pytest.mark.timeout(60)


def operator_pod(values: dict[str, Any] | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = one(render(values or {}), "Deployment")["spec"]["template"]["spec"]
    return pod


def test_two_replicas_prefer_different_nodes_and_a_drain_keeps_one() -> None:
    objects = render()
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["selector"]["matchLabels"]
    (term,) = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": labels},
    }
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": labels}}
    assert budget["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_each_replica_knows_its_pod_name_and_the_flags_reach_the_operators_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubetune.operator.main import settings_from_args

    container = operator_pod(
        {"operator": {"leaderElection": {"leaseDurationSeconds": 15, "renewDeadlineSeconds": 10}}}
    )["containers"][0]
    env = {item["name"]: item["valueFrom"]["fieldRef"]["fieldPath"] for item in container["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}
    monkeypatch.setenv("POD_NAMESPACE", "kubetune-system")
    monkeypatch.setenv("POD_NAME", "kt-kubetune-5d9f-x2x7q")
    election = settings_from_args(build_parser().parse_args(container["args"])).leader_election
    assert election is not None
    assert (election.namespace, election.lease) == ("kubetune-system", "kt-kubetune")
    assert election.identity.startswith("kt-kubetune-5d9f-x2x7q_") and len(election.identity) > len(
        "kt-kubetune-5d9f-x2x7q_"
    )
    assert election.timings == LeaseTimings(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)


def test_a_user_affinity_replaces_the_default_one() -> None:
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    assert operator_pod({"operator": {"affinity": mine}})["affinity"] == mine


def test_without_leader_election_exactly_one_replica_is_replaced_with_recreate() -> None:
    objects = render({"operator": {"leaderElection": {"enabled": False}, "replicas": 1}})
    spec = one(objects, "Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert not any(arg.startswith("--leader") for arg in spec["template"]["spec"]["containers"][0]["args"])
    assert not of_kind(objects, "PodDisruptionBudget") and not of_kind(objects, "Role")
    assert "affinity" not in spec["template"]["spec"]


def test_one_replica_with_leader_election_gets_no_budget_that_would_block_drains() -> None:
    objects = render({"operator": {"replicas": 1}})
    assert one(objects, "Deployment")["spec"]["replicas"] == 1
    assert not of_kind(objects, "PodDisruptionBudget")
    assert one(objects, "Role")["rules"][0]["resources"] == ["leases"]


@pytest.mark.parametrize(
    ("operator", "message"),
    [
        ({"leaderElection": {"enabled": False}}, "operator.replicas > 1 needs operator.leaderElection.enabled"),
        (
            {"leaderElection": {"renewDeadlineSeconds": 10}},
            "renewDeadlineSeconds must be less than leaseDurationSeconds",
        ),
        ({"leaderElection": {"retryPeriodSeconds": 7}}, "retryPeriodSeconds must be less than renewDeadlineSeconds"),
    ],
)
def test_settings_that_could_run_two_leaders_are_refused_at_install(operator: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render({"operator": operator})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lease-duration=5", "--renew-deadline=7"], "lease duration .* longer than the renew deadline"),
        (["--retry-period=0"], "out of range"),
    ],
)
def test_the_operator_refuses_wrong_timings_naming_the_flags(
    flags: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.operator.main import main

    monkeypatch.setenv("POD_NAMESPACE", "kubetune-system")
    try:
        code = main(build_parser().parse_args(["operator", "--leader-elect", *flags]))
    except SystemExit as exit:  # argparse's own refusal
        code = int(exit.code or 0)
    assert code == 2
    assert re.search(message, capsys.readouterr().err)


def test_leader_election_needs_the_operators_namespace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubetune.operator.main import main

    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert main(build_parser().parse_args(["operator", "--leader-elect"])) == 2
    assert "--leader-election-namespace or POD_NAMESPACE" in capsys.readouterr().err
