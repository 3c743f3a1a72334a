"""Table tests of version skew: unknown fields are dropped and named, anything else still fails."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api.job import FineTuneJob
from kubetune.api.skew import unknown_fields_message, without_unknown_fields
from tests.support.builders import a_job


def _error(document: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        FineTuneJob.model_validate(document)
    return caught.value


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (("spec",), "spec.futureFeature"),
        (("spec", "hyperparameters"), "spec.hyperparameters.futureFeature"),
        (("spec", "distributed"), "spec.distributed.futureFeature"),
    ],
)
def test_unknown_fields_are_removed_and_named(where: tuple[str, ...], expected: str) -> None:
    document = a_job("demo").build(validate=True)
    target = document
    for key in where:
        target = target.setdefault(key, {})
    target["futureFeature"] = {"enabled": True}
    cleaned, paths = without_unknown_fields(document, _error(document)) or ({}, [])
    assert paths == [expected]
    assert FineTuneJob.model_validate(cleaned).name == "demo"
    assert "futureFeature" in str(document), "the original is left untouched"
    assert expected in unknown_fields_message(paths) and "upgrade the operator" in unknown_fields_message(paths)


def test_an_invalid_value_beside_an_unknown_field_is_still_an_error() -> None:
    document = a_job("demo").build(validate=True)
    document["spec"]["futureFeature"] = 1
    document["spec"]["hyperparameters"] = {"learningRate": -1}
    assert without_unknown_fields(document, _error(document)) is None
