"""The Dockerfile agrees with the chart and the operator: targets, non-root users, entry points, ports
and pinned versions. (The real-cluster suite builds the images; here nothing is built.)"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from kubetune.api.job import FineTuneJob
from kubetune.cli import build_parser
from kubetune.operator import builders
from kubetune.operator.settings import DEFAULT_TRAINER_IMAGE
from tests.support.chart import ROOT, one, render

pytestmark = pytest.mark.timeout(60)

DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: the dependencies of each distribution, by distribution
DEPENDENCIES = {
    name: [Requirement(r) for r in tomllib.loads((ROOT / path).read_text())["project"]["dependencies"]]
    for name, path in (
        ("core", "pyproject.toml"),
        ("operator", "operator/pyproject.toml"),
        ("trainer", "trainer/pyproject.toml"),
    )
}


@dataclass
class Stage:
    base: str
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    exposed: set[int] = field(default_factory=set)
    runs: list[str] = field(default_factory=list)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined; heredoc bodies skipped."""
    joined = re.sub(r"\\\n", " ", text)
    found, heredoc_end = [], None
    for line in joined.splitlines():
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        found.append((instruction.upper(), arguments.strip()))
        if match := re.search(r"<<'?(\w+)'?", arguments):
            heredoc_end = match[1]
    return found


def parse(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for instruction, arguments in _instructions(text):
        if instruction == "ARG" and current is None and "=" in arguments:
            name, value = arguments.split("=", 1)
            args[name] = value
        elif instruction == "FROM":
            base, _, name = arguments.partition(" AS ")
            current = stages[name.strip()] = Stage(base=base.strip())
        elif current is not None and instruction == "USER":
            current.user = arguments
        elif current is not None and instruction == "ENTRYPOINT":
            current.entrypoint = json.loads(arguments)
        elif current is not None and instruction == "CMD":
            current.cmd = json.loads(arguments)
        elif current is not None and instruction == "EXPOSE":
            current.exposed |= {int(port) for port in arguments.split()}
        elif current is not None and instruction == "RUN":
            current.runs.append(arguments)
    return args, stages


ARGS, STAGES = parse(DOCKERFILE.read_text())


def _uid_gid(stage: Stage) -> tuple[int, int]:
    assert stage.user and re.fullmatch(r"\d+:\d+", stage.user), "USER must be numeric uid:gid (runAsNonRoot checks it)"
    uid, gid = stage.user.split(":")
    return int(uid), int(gid)


def test_targets_exist() -> None:
    assert {"operator", "trainer"} <= set(STAGES)


def test_base_images_are_pinned_and_the_trainer_base_is_a_build_argument() -> None:
    assert STAGES["trainer"].base == "${TRAINER_BASE_IMAGE}"
    assert STAGES["operator"].base == "${PYTHON_IMAGE}"
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-\S+", ARGS["TRAINER_BASE_IMAGE"])
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", ARGS["PYTHON_IMAGE"])
    assert "TORCH_INDEX_URL" in ARGS


def test_operator_image_runs_as_the_charts_non_root_user() -> None:
    uid, gid = _uid_gid(STAGES["operator"])
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert uid != 0
    assert (uid, gid) == (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])


def test_trainer_image_runs_as_the_pod_builders_user() -> None:
    uid, gid = _uid_gid(STAGES["trainer"])
    assert uid != 0
    assert uid == gid == builders.TRAINER_UID


def test_operator_entry_point_takes_the_charts_arguments() -> None:
    stage = STAGES["operator"]
    assert stage.entrypoint == ["kubetune"]
    assert PYPROJECT["project"]["scripts"]["kubetune"] == "kubetune.cli:main"
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container, "the chart must use the image's entry point"
    parsed = build_parser().parse_args(container["args"])  # the real CLI accepts every flag the chart passes
    assert parsed.command == "operator" and parsed.all_namespaces
    assert {parsed.metrics_port, parsed.health_port} <= stage.exposed
    namespaced = one(render({"watch": {"allNamespaces": False, "namespaces": ["a", "b"]}}), "Deployment")
    assert build_parser().parse_args(namespaced["spec"]["template"]["spec"]["containers"][0]["args"]).namespace == [
        "a",
        "b",
    ]


def test_default_trainer_resources_reach_the_operator_and_its_pod_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.operator.main import settings_from_args

    monkeypatch.setenv("POD_NAMESPACE", "kubetune-system")  # as the chart's Deployment sets it
    values = {"trainer": {"resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}}}}
    container = one(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    settings = settings_from_args(build_parser().parse_args(container["args"])).build_settings()
    assert settings.default_resources is not None
    assert settings.default_resources.to_wire() == values["trainer"]["resources"]
    default = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--trainer-resources") for a in default)  # none unless configured


@pytest.mark.parametrize(
    ("operator", "share", "protected"),
    [
        ({}, 0.55, ()),
        ({"nodeOutageShare": 0.8, "protectedNamespaces": ["ml-prod", "billing"]}, 0.8, ("ml-prod", "billing")),
        ({"nodeOutageShare": None}, None, ()),
    ],
)
def test_the_brake_and_protected_namespaces_reach_the_operator(
    monkeypatch: pytest.MonkeyPatch, operator: dict[str, Any], share: float | None, protected: tuple[str, ...]
) -> None:
    from kubetune.operator.main import settings_from_args

    monkeypatch.setenv("POD_NAMESPACE", "kubetune-system")  # as the chart's Deployment sets it
    container = one(render({"operator": operator}), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    settings = settings_from_args(build_parser().parse_args(container["args"]))
    assert settings.node_outage.unhealthy_share == share
    assert settings.protected_namespaces == (
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "kubetune-system",
        *protected,
    )


@pytest.mark.parametrize("flag", ["--node-outage-share=0", "--node-outage-share=1.5", "--node-outage-share=most"])
def test_a_wrong_share_is_refused_naming_the_flag(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["operator", flag])
    assert exited.value.code == 2 and "--node-outage-share" in capsys.readouterr().err


def test_trainer_image_has_what_the_operators_pods_run() -> None:
    job = FineTuneJob.model_validate(yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text()))
    pod = builders.build_worker_pod(job, 1, 0, builders.BuildSettings(trainer_image="img"))
    command = pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "kubetune.worker"]  # the pod's supervisor, in the core distribution
    assert command[command.index("--") + 1] == "torchrun"  # installed with torch by the trainer extra
    assert any(r.name == "torch" for r in DEPENDENCIES["trainer"])
    assert any("kubetune-trainer" in run for run in STAGES["trainer"].runs)
    module = command.index("-m", command.index("--"))
    assert command[module + 1] == "kubetune.cli"
    parsed = build_parser().parse_args(command[module + 2 :])
    assert parsed.command == "train"
    assert {parsed.metrics_port, builders.RENDEZVOUS_PORT} <= STAGES["trainer"].exposed


def test_operator_image_has_no_torch() -> None:
    assert any("kubetune-operator" in run for run in STAGES["operator"].runs)
    assert not any("kubetune-trainer" in run or "torch" in run for run in STAGES["operator"].runs)
    assert not {r.name for r in DEPENDENCIES["operator"] + DEPENDENCIES["core"]} & {"torch", "kubetune-trainer"}


def test_chart_default_trainer_image_is_the_operators_default() -> None:
    container = one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert f"--trainer-image={DEFAULT_TRAINER_IMAGE}" in container["args"]


def _pins() -> dict[str, str]:
    body = DOCKERFILE.read_text().split("COPY <<EOF /constraints.txt\n", 1)[1].split("\nEOF\n", 1)[0]
    pins = {}
    for line in body.splitlines():
        name, version = line.split("==")
        pins[name.lower()] = version
    return pins


def test_every_direct_dependency_is_pinned_inside_pyprojects_range() -> None:
    requirements = [r for rs in DEPENDENCIES.values() for r in rs if not r.name.startswith("kubetune")]
    pins = _pins()
    for requirement in requirements:
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in the Dockerfile"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement)


def test_build_context_holds_only_the_sources() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!src/", "!operator/", "!trainer/"} <= set(lines)
    copied = {Path(p).name for p in re.findall(r"^COPY (?!--)(\S+)", DOCKERFILE.read_text(), re.M)}
    assert copied <= {"pyproject.toml", "src", "operator", "trainer", "<<EOF"}
