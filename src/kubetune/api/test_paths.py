"""The output-path rule: folders a job writes overlap neither each other nor what it reads.

The CEL side of every rule is compared with these Python verdicts in test_cel_parity.py (PATH_CASES).
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.paths import is_plain, overlaps
from kubetune.api.validation import Document, validate_document
from tests.support.builders import a_job

SPEC = {"model": {"source": "hf://org/m"}, "dataset": {"train": "t.jsonl"}}
REFERENCE = {"baselines": {}, "referenceModel": {"source": "pvc://m/big"}}


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("pvc://c/run", "pvc://c/run", True),
        ("pvc://c/run/", "pvc://c/run", True),
        ("pvc://c/run/out", "pvc://c/run", True),
        ("pvc://c", "pvc://c/run/out", True),
        ("pvc://c/", "pvc://c/run/out/", True),
        ("pvc://c/run", "pvc://c/run2", False),
        ("pvc://c/run2", "pvc://c/run/", False),
        ("pvc://c/run", "pvc://d/run", False),
        ("pvc://c", "pvc://c2", False),
        ("pvc://c/run", "hf://c/run", False),
        ("pvc://c/run", "c/run", False),
    ],
)
def test_paths_overlap_when_one_is_a_prefix_of_the_other_by_whole_segments(
    first: str, second: str, expected: bool
) -> None:
    assert overlaps(first, second) == overlaps(second, first) == expected


@pytest.mark.parametrize(
    ("path", "plain"),
    [
        ("pvc://c/run", True), ("pvc://c/run/", True), ("pvc://c", True), ("pvc://c/a..b/.c/c.", True),
        ("../data/t.jsonl", True), ("./data//t.jsonl", True), ("hf://org/m", True), (None, True),
        ("pvc://c//run", False), ("pvc://c/./run", False), ("pvc://c/run/.", False), ("pvc://c/../run", False),
        ("pvc://c/run/..", False), ("pvc://c/run//", False),
    ],
)  # fmt: skip
def test_only_plain_pvc_paths_are_compared(path: str | None, plain: bool) -> None:
    assert is_plain(path) == plain


#: (spec parts, the field a refusal names and the field it is measured against; None: accepted)
TABLE: list[tuple[dict[str, Any], tuple[str, str] | None]] = [
    ({"storage": {"checkpoints": "pvc://c/run", "output": "pvc://c/run"}}, ("storage.output", "storage.checkpoints")),
    ({"storage": {"checkpoints": "pvc://c/run", "output": "pvc://c/run/out"}}, ("storage.output", "storage.checkpoints")),
    ({"storage": {"checkpoints": "pvc://c/run/ckpt", "output": "pvc://c/run"}}, ("storage.output", "storage.checkpoints")),
    ({"storage": {"checkpoints": "pvc://c/run/", "output": "pvc://c/run/out/"}}, ("storage.output", "storage.checkpoints")),
    ({"storage": {"checkpoints": "pvc://c/run", "output": "pvc://c/run-out"}}, None),
    ({"storage": {"checkpoints": "pvc://c/run", "output": "pvc://d/run"}}, None),
    ({"storage": {"output": "pvc://c/run"}}, None),
    ({"storage": {"checkpoints": "pvc://c/run"}}, None),
    ({"dataset": {"train": "pvc://d/data/t.jsonl"}, "storage": {"output": "pvc://d/data"}}, ("storage.output", "dataset.train")),
    ({"dataset": {"train": "pvc://d/data/t.jsonl"}, "storage": {"output": "pvc://d/data/t.jsonl"}}, ("storage.output", "dataset.train")),
    ({"dataset": {"train": "t.jsonl", "validation": "pvc://d/v.jsonl"}, "storage": {"output": "pvc://d"}}, ("storage.output", "dataset.validation")),
    ({"dataset": {"train": "pvc://d/t.jsonl"}, "storage": {"checkpoints": "pvc://d/"}}, ("storage.checkpoints", "dataset.train")),
    ({"dataset": {"train": "pvc://d/t.jsonl"}, "storage": {"checkpoints": "pvc://d/t.jsonl/c"}}, ("storage.checkpoints", "dataset.train")),
    ({"dataset": {"train": "pvc://d/data/t.jsonl"}, "storage": {"checkpoints": "pvc://d/ckpt", "output": "pvc://d/out"}}, None),
    ({"model": {"source": "pvc://m/base"}, "storage": {"output": "pvc://m"}}, ("storage.output", "model.source")),
    ({"model": {"source": "pvc://m/base"}, "storage": {"output": "pvc://m/base/tuned"}}, ("storage.output", "model.source")),
    ({"model": {"source": "pvc://m"}, "storage": {"checkpoints": "pvc://m/ckpt"}}, ("storage.checkpoints", "model.source")),
    ({"model": {"source": "pvc://m/base"}, "storage": {"output": "pvc://m/tuned"}}, None),
    ({"model": {"source": "hf://m/base"}, "storage": {"output": "pvc://m/base"}}, None),
    ({"evaluation": REFERENCE, "storage": {"output": "pvc://m"}}, ("storage.output", "evaluation.referenceModel.source")),
    ({"evaluation": REFERENCE, "storage": {"checkpoints": "pvc://m/big/c"}}, ("storage.checkpoints", "evaluation.referenceModel.source")),
    ({"evaluation": REFERENCE, "storage": {"checkpoints": "pvc://m/c", "output": "pvc://m/o"}}, None),
]  # fmt: skip


@pytest.mark.parametrize(("parts", "refused"), TABLE, ids=[str(parts) for parts, _ in TABLE])
def test_written_folders_overlap_nothing(parts: dict[str, Any], refused: tuple[str, str] | None) -> None:
    data = {**SPEC, **parts}
    if refused is None:
        FineTuneJobSpec.model_validate(data)
        return
    with pytest.raises(ValidationError) as caught:
        FineTuneJobSpec.model_validate(data)
    [error] = caught.value.errors()
    written, other = refused
    assert error["ctx"]["field"] == written
    assert f"`{written}` must not be, contain or lie inside `{other}`" in error["msg"]


def test_kubetune_validate_names_the_field_and_its_line() -> None:
    manifest = a_job("paths").spec(storage={"checkpoints": "pvc://c/run", "output": "pvc://c/run/model"}).build()
    _, problems = validate_document(Document("job.yaml", manifest, None))
    assert [problem.field for problem in problems] == ["spec.storage.output"]
    assert "inside `storage.checkpoints`" in problems[0].message


@pytest.mark.parametrize(
    ("parts", "field"),
    [
        ({"storage": {"output": "pvc://c/../other"}}, "output"),
        ({"storage": {"checkpoints": "pvc://c//run"}}, "checkpoints"),
        ({"dataset": {"train": "pvc://d/x/./t.jsonl"}}, "train"),
        ({"dataset": {"train": "t.jsonl", "validation": "pvc://d/x/../v.jsonl"}}, "validation"),
        ({"model": {"source": "pvc://m/../base"}}, "source"),
        ({"evaluation": {"baselines": {}, "referenceModel": {"source": "pvc://m/big/."}}}, "source"),
    ],
)
def test_a_pvc_path_must_be_written_plainly(parts: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=f"`{field}`: write the `pvc://` path plainly"):
        FineTuneJobSpec.model_validate({**SPEC, **parts})


def test_local_paths_may_climb() -> None:
    FineTuneJobSpec.model_validate({**SPEC, "dataset": {"train": "../data/t.jsonl"}, "model": {"source": "../m"}})
