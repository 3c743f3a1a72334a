"""Each attempt's NetworkPolicy admits exactly its own gang (every port) and the operator (TCP 9400), and
nothing else: other attempts of the job, other jobs, other namespaces. Selectors are evaluated against
the labels the builders really put on pods."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.operator import builders
from kubetune.operator.network_policy import NAMESPACE_NAME_LABEL, GangNetwork, parse_gang_network
from tests.support.builders import a_cpu_gang
from tests.support.selectors import selects

OPERATOR_LABELS = {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/instance": "kt",
                   "app.kubernetes.io/component": "operator"}  # fmt: skip
NETWORK = GangNetwork("kubetune-system", OPERATOR_LABELS)
SETTINGS = builders.BuildSettings(trainer_image="img", gang_network=NETWORK)


def pod_labels(name: str, attempt: int, index: int) -> dict[str, str]:
    pod = builders.build_worker_pod(a_cpu_gang(name).to_job(), attempt, index, SETTINGS)
    return pod["metadata"]["labels"]  # type: ignore[no-any-return]


def policy(name: str = "demo", attempt: int = 2) -> dict[str, Any]:
    built = builders.build_network_policy(a_cpu_gang(name).to_job(), attempt, SETTINGS)
    assert built is not None
    return built


def test_none_without_the_setting() -> None:
    plain = builders.BuildSettings(trainer_image="img")
    assert builders.build_network_policy(a_cpu_gang().to_job(), 1, plain) is None


def test_named_and_owned_as_the_attempts_pods() -> None:
    built, job = policy(), a_cpu_gang("demo").to_job()
    assert built["metadata"]["name"] == "demo-a2" and built["metadata"]["namespace"] == job.namespace
    assert built["metadata"]["ownerReferences"] == [builders.owner_reference(job)]
    assert built["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize(
    ("name", "attempt", "index", "selected"),
    [
        ("demo", 2, 0, True),
        ("demo", 2, 3, True),
        ("demo", 1, 0, False),  # the job's earlier attempt (a fenced gang on a cut-off node)
        ("demo", 3, 0, False),
        ("other", 2, 0, False),  # another job of the namespace, same attempt number
    ],
)
def test_selects_exactly_the_attempts_pods_and_admits_only_them_on_every_port(
    name: str, attempt: int, index: int, selected: bool
) -> None:
    spec = policy()["spec"]
    labels = pod_labels(name, attempt, index)
    assert selects(spec["podSelector"], labels) is selected
    gang_rule = spec["ingress"][0]
    assert "ports" not in gang_rule  # rendezvous (29500) and Gloo/NCCL's run-time ports
    (peer,) = gang_rule["from"]
    assert set(peer) == {"podSelector"}  # of the policy's own namespace only
    assert selects(peer["podSelector"], labels) is selected


def test_the_operator_reaches_port_9400_only_from_its_namespace() -> None:
    rule = policy()["spec"]["ingress"][1]
    assert rule["ports"] == [{"protocol": "TCP", "port": builders.METRICS_PORT}]
    (operator,) = rule["from"]
    assert operator["namespaceSelector"] == {"matchLabels": {NAMESPACE_NAME_LABEL: "kubetune-system"}}
    assert selects(operator["podSelector"], OPERATOR_LABELS)
    assert not selects(operator["podSelector"], pod_labels("demo", 2, 0))
    assert not selects(policy()["spec"]["ingress"][0]["from"][0]["podSelector"], OPERATOR_LABELS)


def test_metrics_peers_are_added_to_port_9400_only() -> None:
    prometheus = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "monitoring"}}}
    settings = builders.BuildSettings(
        trainer_image="img", gang_network=GangNetwork("ops", OPERATOR_LABELS, (prometheus,))
    )
    built = builders.build_network_policy(a_cpu_gang().to_job(), 1, settings)
    assert built is not None
    assert built["spec"]["ingress"][1]["from"][1] == prometheus
    assert prometheus not in built["spec"]["ingress"][0]["from"]


def test_the_flag_parses_into_settings() -> None:
    flag = json.dumps(
        {"operatorLabels": OPERATOR_LABELS, "metricsFrom": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}]}
    )
    parsed = parse_gang_network(flag, "ops")
    assert parsed == GangNetwork("ops", OPERATOR_LABELS, ({"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/8"}}))


@pytest.mark.parametrize(
    ("flag", "namespace", "named"),
    [
        ("{", "ops", "not JSON"),
        ("[]", "ops", "JSON object"),
        ('{"operatorLabels": {}}', "ops", "operatorLabels"),
        ('{"operatorLabels": {"a": 1}}', "ops", "operatorLabels"),
        ('{"operatorLabels": {"a": "b"}, "metricsFrom": {}}', "ops", "metricsFrom"),
        ('{"operatorLabels": {"a": "b"}, "metricsFrom": [{}]}', "ops", "metricsFrom[0]: must be a non-empty"),
        (
            '{"operatorLabels": {"a": "b"}, "metricsFrom": [{"podSelector": {}}, {"nsSelector": {}}]}',
            "ops",
            "metricsFrom[1]: unknown key(s) nsSelector",
        ),
        (
            '{"operatorLabels": {"a": "b"}, "metricsFrom": [{"namespaceSelector": {"matchLabel": {}}}]}',
            "ops",
            "namespaceSelector may hold only",
        ),
        (
            '{"operatorLabels": {"a": "b"}, "metricsFrom": [{"ipBlock": {"cidrs": "10.0.0.0/8"}}]}',
            "ops",
            "ipBlock needs cidr",
        ),
        ('{"operatorLabels": {"a": "b"}, "peers": []}', "ops", "unknown key(s) peers"),
        ('{"operatorLabels": {"a": "b"}}', "", "POD_NAMESPACE"),
    ],
)
def test_a_wrong_flag_is_refused_naming_what_is_wrong(flag: str, namespace: str, named: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_gang_network(flag, namespace)
    assert named in str(refused.value)


def test_the_operator_command_refuses_a_wrong_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.cli import main

    monkeypatch.setenv("POD_NAMESPACE", "ops")
    assert main(["operator", "--gang-network-policy", '{"operatorLabels": []}']) == 2
    assert "--gang-network-policy: operatorLabels" in capsys.readouterr().err


def test_a_deleted_namesakes_pods_are_not_the_gang() -> None:
    """The same YAML applied again: the earlier job's attempt-1 pods (still terminating) carry the same
    name and attempt, but not the new job's uid."""
    new, old = a_cpu_gang("demo").metadata(uid="uid-new").to_job(), a_cpu_gang("demo").metadata(uid="uid-old").to_job()
    built = builders.build_network_policy(new, 1, SETTINGS)
    assert built is not None
    for job, selected in ((new, True), (old, False)):
        labels = builders.build_worker_pod(job, 1, 0, SETTINGS)["metadata"]["labels"]
        assert selects(built["spec"]["podSelector"], labels) is selected
        assert selects(built["spec"]["ingress"][0]["from"][0]["podSelector"], labels) is selected
