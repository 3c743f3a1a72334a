"""The `kubetune` command's arguments: `--version`, and `status` (its flags and their refusals, exit 2)."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest

from kubetune import cli

pytestmark = pytest.mark.timeout(10)


def test_version_names_every_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"kubetune {metadata.version('kubetune')}"
    for distribution in ("kubetune-operator", "kubetune-trainer"):  # all three are installed in the workspace
        assert f"{distribution} {metadata.version(distribution)}" in lines


def test_version_leaves_out_what_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def version(name: str) -> str:
        if name != "kubetune":
            raise metadata.PackageNotFoundError(name)
        return "1.2.3"

    monkeypatch.setattr(metadata, "version", version)
    assert cli.versions() == "kubetune 1.2.3"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "demo"], {"name": "demo", "namespace": None, "watch": False, "interval": 5.0, "prometheus": None}),
        (["status", "demo", "-n", "team-a", "-w"], {"namespace": "team-a", "watch": True}),
        (["status", "my.job-1", "--namespace", "a", "--watch", "--interval", "0.5"], {"name": "my.job-1", "interval": 0.5}),
        (["status", "demo", "--kubeconfig", "/k", "--context", "prod"], {"kubeconfig": "/k", "context": "prod"}),
        (["status", "demo", "--prometheus", "http://prometheus.monitoring:9090/"], {"prometheus": "http://prometheus.monitoring:9090/"}),
    ],
)  # fmt: skip
def test_status_arguments(argv: list[str], expected: dict[str, object]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["status"], "the following arguments are required: NAME"),
        (["status", "Demo_1"], "'Demo_1' is not a Kubernetes object name"),
        (["status", "demo", "-n", "team.a"], "'team.a' is not a namespace name"),
        (["status", "demo", "--interval", "0"], "argument --interval: 0 s is out of range"),
        (["status", "demo", "--interval", "soon"], "'soon' is not a number of seconds"),
        (["status", "demo", "--prometheus", "prometheus:9090"], "'prometheus:9090' is not an http:// or https:// URL"),
        (["status", "demo", "--all-namespaces"], "unrecognized arguments: --all-namespaces"),
    ],
)
def test_bad_status_flags_exit_2(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_status_without_the_kubernetes_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "kubetune.client.status", raising=False)
    monkeypatch.delitem(sys.modules, "kubetune.client.cluster", raising=False)
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if not installed: importing it fails
    assert cli.main(["status", "demo"]) == 1
    assert "kubetune status needs the Kubernetes client: pip install 'kubetune[status]'" in capsys.readouterr().err
