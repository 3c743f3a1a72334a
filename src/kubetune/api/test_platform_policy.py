"""The platform policy file as CI pipelines use it: `kubetune validate --policy FILE job.yaml` reads the
ConfigMap the chart renders, refuses an unusable one naming file and key, and names file, line, field and
rule for every job it refuses (exit 2), as the API server would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.invocation import EXIT_BAD_INPUT
from kubetune.api.platform_policy import PlatformPolicy, PolicyError, image_allowed, load_policy, split_list
from kubetune.api.platform_rules import validate_files_against
from kubetune.cli import main as kubetune
from tests.support.builders import a_job


def _config_map(data: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "platform"}, "data": data}


def _write(path: Path, *documents: Any) -> str:
    path.write_text(yaml.safe_dump_all(documents) if documents else "")
    return str(path)


@pytest.mark.parametrize(
    ("text", "entries"),
    [("a,b", ["a", "b"]), (" a ,\n b,,", ["a", "b"]), ("", []), (" , ", []), ("sha256:ab", ["sha256:ab"])],
)
def test_lists_are_comma_separated_and_blanks_dropped(text: str, entries: list[str]) -> None:
    assert split_list(text) == entries


@pytest.mark.parametrize(
    ("image", "entry", "allowed"),
    [
        ("ghcr.io/acme/trainer:1", "ghcr.io/acme/trainer", True),
        ("ghcr.io/acme/trainer", "ghcr.io/acme/trainer", True),
        ("ghcr.io/acme/trainer@sha256:ff", "ghcr.io/acme/trainer", True),
        ("ghcr.io/acme/trainer/cuda:1", "ghcr.io/acme/trainer", True),
        ("ghcr.io/acme/trainer-evil:1", "ghcr.io/acme/trainer", False),
        ("ghcr.io/acme/trainerx", "ghcr.io/acme/trainer", False),
        ("ghcr.io/acme/x:1", "ghcr.io/acme/", True),
        ("ghcr.io/acmex/x:1", "ghcr.io/acme/", False),
        ("ghcr.io/acme/trainer:1.2", "ghcr.io/acme/trainer:1.2", True),
        ("ghcr.io/acme/trainer:1.20", "ghcr.io/acme/trainer:1.2", False),
        ("anything/at:all", "*", True),
        ("r/x@sha256:abc", "sha256:abc", True),
        ("r/x@sha256:abcd", "sha256:abc", False),
        ("sha256:abc", "sha256:abc", False),
    ],
)
def test_image_entries_match_at_a_boundary(image: str, entry: str, allowed: bool) -> None:
    assert image_allowed(image, entry) == allowed


def test_a_policy_file_reads_every_key(tmp_path: Path) -> None:
    data = {"allowedImages": "a/, b", "allowedTolerationKeys": "", "maxGangProcesses": "8", "maxGPUsPerJob": "0"}
    policy = load_policy(_write(tmp_path / "p.yaml", _config_map(data)))
    assert policy == PlatformPolicy(images=("a/", "b"), toleration_keys=(), max_gang_processes=8, max_gpus=0)
    assert load_policy(_write(tmp_path / "empty.yaml", _config_map(None))) == PlatformPolicy()


#: (the file's documents, words the error must contain)
BAD_FILES: list[tuple[tuple[Any, ...], str]] = [
    ((), "no YAML document found"),
    ((_config_map({}), _config_map({})), "expected one ConfigMap, found 2 documents"),
    (({"kind": "Secret"},), "expected a ConfigMap (the chart's platform policy), got 'Secret'"),
    (([1, 2],), "expected a ConfigMap (the chart's platform policy), got 'list'"),
    ((_config_map(["a"]),), "data: expected a map of keys to strings"),
    ((_config_map({"maxGangProcesses": 8}),), "data.maxGangProcesses: must be a string (quote numbers"),
    ((_config_map({"allowedImage": "a"}),), "data.allowedImage: unknown key (did you mean 'allowedImages'?)"),
    ((_config_map({"colour": "a"}),), "data.colour: unknown key (known keys: allowedImages,"),
    ((_config_map({"maxGPUsPerJob": "4.5"}),), "data.maxGPUsPerJob: must be a whole number of at most 9 digits"),
]


@pytest.mark.parametrize(("documents", "words"), BAD_FILES)
def test_an_unusable_policy_file_is_refused_naming_file_and_key(
    tmp_path: Path, documents: tuple[Any, ...], words: str
) -> None:
    path = _write(tmp_path / "policy.yaml", *documents)
    with pytest.raises(PolicyError) as refused:
        load_policy(path)
    assert str(refused.value).startswith(path) and words in str(refused.value)


def test_an_unreadable_policy_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(str(tmp_path / "bad.yaml"))


def _job_file(tmp_path: Path, name: str, **spec: Any) -> str:
    return _write(tmp_path / f"{name}.yaml", a_job(name).spec(spec).build())


def test_validate_against_a_policy_names_file_line_field_and_rule(tmp_path: Path) -> None:
    policy = PlatformPolicy(images=("ghcr.io/acme/",), max_gang_processes=4)
    good = _job_file(tmp_path, "good", image="ghcr.io/acme/t:1")
    bad = _job_file(tmp_path, "bad", image="evil/t:1", distributed={"workers": 5, "accelerator": "cpu"})
    jobs, problems = validate_files_against([good, bad], policy)
    assert [job.name for job in jobs] == ["good"]
    lines = Path(bad).read_text().splitlines()
    image_line = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("image:"))
    assert [str(p).split(": refused")[0] for p in problems] == [
        f"{bad}:{image_line}: spec.image",
        f"{bad}:{next(i for i, line in enumerate(lines, 1) if 'workers:' in line)}: spec.distributed.workers",
    ]


def test_validate_against_a_policy_counts_the_gpus_a_cpu_job_asks_for_in_its_resources(tmp_path: Path) -> None:
    """The operator passes `spec.resources` into every pod: `accelerator: cpu` does not make them free."""
    policy = PlatformPolicy(max_gpus=8)
    cpu = {"workers": 1, "accelerator": "cpu"}
    small = _job_file(tmp_path, "small", distributed=cpu, resources={"limits": {"nvidia.com/gpu": 8}})
    large = _job_file(tmp_path, "large", distributed=cpu, resources={"limits": {"nvidia.com/gpu": 64}})
    jobs, problems = validate_files_against([small, large], policy)
    assert [job.name for job in jobs] == ["small"]
    assert [str(problem).split(": spec.distributed.workers: ")[1] for problem in problems] == [
        'refused by rule "max-gpus-per-job": 1 workers x 64 GPUs per worker = 64 GPUs, above the maxGPUsPerJob '
        "of the platform policy (8); per worker: 64 nvidia.com/gpu (spec.resources)"
    ]


def test_kubetune_validate_with_a_policy_exits_2_on_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _write(tmp_path / "policy.yaml", _config_map({"allowedPriorityClasses": "team-low"}))
    refused = _job_file(tmp_path, "refused", scheduling={"priorityClassName": "system-node-critical"})
    admitted = _job_file(tmp_path, "admitted", scheduling={"priorityClassName": "team-low"})
    assert kubetune(["validate", "--policy", policy, admitted]) == 0
    assert kubetune(["validate", admitted, refused]) == 0  # without the policy both are valid
    capsys.readouterr()
    assert kubetune(["validate", "--policy", policy, admitted, refused]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert 'spec.scheduling.priorityClassName: refused by rule "allowed-priority-classes"' in err
    assert "1 problem(s) found" in err


def test_kubetune_validate_with_an_unusable_policy_checks_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _write(tmp_path / "policy.yaml", _config_map({"maxGangProcess": "4"}))
    job = _job_file(tmp_path, "job")
    assert kubetune(["validate", "--policy", policy, job]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{policy}: data.maxGangProcess: unknown key (did you mean 'maxGangProcesses'?)" in err
    assert "nothing was checked" in err
