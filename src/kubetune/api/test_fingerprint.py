"""Which edits of a job change what a resume depends on, and which do not."""

from __future__ import annotations

import types
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from kubetune.api.fingerprint import COUNTED, NOT_COUNTED, Difference, fingerprint
from kubetune.api.job import FineTuneJobSpec
from tests.support.builders import a_job

BASE: dict[str, Any] = {"spec": {"storage": {"checkpoints": "pvc://ckpt/run"}}}


def spec_with(edit: dict[str, Any]) -> FineTuneJobSpec:
    return a_job("demo").merged(BASE).merged({"spec": edit}).to_job().spec


CHANGES_IT = {
    "model.source": {"model": {"source": "pvc://models/other"}},
    "model.ggufFile": {"model": {"source": "pvc://models/base", "ggufFile": "m.Q4.gguf"}},
    "dataset.train": {"dataset": {"train": "pvc://data/other.jsonl"}},
    "dataset.format": {"dataset": {"format": "chat"}},
    "dataset.maxSeqLength": {"dataset": {"maxSeqLength": 512}},
    "dataset.packing": {"dataset": {"packing": True}},
    "dataset.trainOnInputs": {"dataset": {"trainOnInputs": True}},
    "method.type": {"method": {"type": "lora"}},
    "hyperparameters.learningRate": {"hyperparameters": {"learningRate": 1e-4}},
    "hyperparameters.scheduler": {"hyperparameters": {"scheduler": "linear"}},
    "hyperparameters.warmupRatio": {"hyperparameters": {"warmupRatio": 0.1}},
    "hyperparameters.weightDecay": {"hyperparameters": {"weightDecay": 0.1}},
    "hyperparameters.microBatchSize": {"hyperparameters": {"microBatchSize": 8}},
    "hyperparameters.gradientAccumulationSteps": {"hyperparameters": {"gradientAccumulationSteps": 4}},
    "hyperparameters.seed": {"hyperparameters": {"seed": 7}},
    "hyperparameters.epochs": {"hyperparameters": {"epochs": 5}},
    "hyperparameters.maxSteps": {"hyperparameters": {"maxSteps": 100}},
    "hyperparameters.maxGradNorm": {"hyperparameters": {"maxGradNorm": 0.5}},
    "distributed.workers": {"distributed": {"workers": 4}},
    "distributed.zeroStage": {"distributed": {"zeroStage": 3}},
    "distributed.precision": {"distributed": {"precision": "fp32"}},
}

KEEPS_IT = {
    "evaluation": {"evaluation": {"everySteps": 5, "exactMatch": True}},
    "early stopping": {"evaluation": {"everySteps": 5}, "earlyStopping": {"patience": 9}},
    "checkpoint interval and retention": {"checkpointing": {"everySteps": 7, "keep": 5}},
    "retry policy": {"retryPolicy": {"maxRestarts": 9, "backoffSeconds": 1}},
    "the output folder": {"storage": {"output": "pvc://out/model"}},
    "resources": {"resources": {"limits": {"memory": "64Gi"}}},
    "the image": {"image": "registry.example/kubetune:2"},
    "suspend": {"suspend": True},
    "a deadline": {"activeDeadlineSeconds": 3600},
    "the memory knobs": {"distributed": {"offloadOptimizer": True, "gradAccumDtype": "precision"}},
    "the leakage threshold": {"dataset": {"maxLeakageFraction": 0.5}},
    "a default written out": {"hyperparameters": {"learningRate": 2e-5, "seed": 42}},
}


@pytest.mark.parametrize(("field", "edit"), CHANGES_IT.items(), ids=list(CHANGES_IT))
def test_an_edit_of_what_a_resume_depends_on_changes_it_and_is_named(field: str, edit: dict[str, Any]) -> None:
    before, after = fingerprint(spec_with({})), fingerprint(spec_with(edit))
    assert after.digest != before.digest
    assert field in [d.field for d in after.differences(before.fields)]


@pytest.mark.parametrize("edit", KEEPS_IT.values(), ids=list(KEEPS_IT))
def test_an_edit_of_anything_else_keeps_it(edit: dict[str, Any]) -> None:
    before, after = fingerprint(spec_with({})), fingerprint(spec_with(edit))
    assert after == before
    assert after.differences(before.fields) == []


def test_lora_settings_count_and_target_module_order_does_not() -> None:
    lora = {"method": {"type": "lora", "lora": {"targetModules": ["q_proj", "v_proj"]}}}
    base = fingerprint(spec_with(lora))
    reordered = fingerprint(spec_with({"method": {"type": "lora", "lora": {"targetModules": ["v_proj", "q_proj"]}}}))
    ranked = fingerprint(spec_with({"method": {"type": "lora", "lora": {"rank": 64, "targetModules": ["q_proj"]}}}))
    merged_off = fingerprint(
        spec_with({"method": {"type": "lora", "lora": {"targetModules": ["q_proj", "v_proj"], "merge": False}}})
    )
    assert reordered == base and merged_off == base
    assert [d.field for d in ranked.differences(base.fields)] == ["method.lora.rank", "method.lora.targetModules"]


def test_the_validation_split_counts_only_without_a_validation_file() -> None:
    with_file = {"dataset": {"validation": "pvc://data/val.jsonl"}}
    assert fingerprint(spec_with(with_file)) == fingerprint(
        spec_with({**with_file, "dataset": {**with_file["dataset"], "validationSplit": 0.3}})
    )
    assert fingerprint(spec_with({"dataset": {"validationSplit": 0.3}})) != fingerprint(spec_with({}))


def test_a_difference_names_the_field_with_the_old_and_new_value() -> None:
    before = fingerprint(spec_with({}))
    after = fingerprint(spec_with({"hyperparameters": {"learningRate": 1e-4}}))
    assert [str(d) for d in after.differences(before.fields)] == ["spec.hyperparameters.learningRate: 2e-05 -> 0.0001"]


def test_a_field_the_earlier_record_lacks_is_not_a_difference() -> None:
    now = fingerprint(spec_with({"hyperparameters": {"learningRate": 1e-4}}))
    older_record = {k: v for k, v in now.fields.items() if k != "hyperparameters.learningRate"}
    assert now.differences(older_record) == []
    assert now.differences({**older_record, "dataset.packing": True}) == [Difference("dataset.packing", True, False)]


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field of a model by wire path, nested models (optional or not) followed."""
    found = []
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        nested = [
            a
            for a in (info.annotation, *typing.get_args(info.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if nested and not isinstance(info.annotation, types.GenericAlias):
            found += _leaves(nested[0], path + ".")
        else:
            found.append(path)
    return found


def test_every_spec_field_is_either_counted_or_not() -> None:
    """A new spec field must be classified here (and in the module docstring): a resume may depend on it."""
    unclassified = [
        leaf
        for leaf in _leaves(FineTuneJobSpec)
        if leaf not in COUNTED and not any(leaf == p or leaf.startswith(p + ".") for p in NOT_COUNTED)
    ]
    assert unclassified == []
    assert not set(COUNTED) & set(NOT_COUNTED)
