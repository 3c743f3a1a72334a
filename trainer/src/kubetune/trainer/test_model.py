"""Loading the model: files of a local model folder that the trainer's user may not read are named, with
the user (transformers reports such a file as missing; a claim written by another user is the usual cause).

The tests run as root, who may read everything: they say which paths this process "may not read" by
replacing `os.access`, the one question `unreadable_files` asks."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.trainer import model
from kubetune.trainer.errors import ModelError
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(60)


def denying(*names: str) -> Callable[..., bool]:
    allowed = os.access

    def access(path: Any, mode: int, **options: Any) -> bool:
        return False if Path(path).name in names else allowed(path, mode, **options)

    return access


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (weights / name).write_text("{}")
    return weights


@pytest.mark.parametrize(
    ("denied", "expected"),
    [
        ((), []),
        (("model.safetensors",), ["model.safetensors"]),
        (("tokenizer.json", "model.safetensors"), ["model.safetensors", "tokenizer.json"]),
        (("weights",), ["weights/"]),  # the folder itself: nothing in it can be listed
    ],
)
def test_the_files_of_a_model_folder_this_user_may_not_read_are_named(
    folder: Path, monkeypatch: pytest.MonkeyPatch, denied: tuple[str, ...], expected: list[str]
) -> None:
    monkeypatch.setattr(os, "access", denying(*denied))
    assert model.unreadable_files(str(folder)) == expected


def test_a_hub_id_or_a_missing_folder_has_nothing_unreadable(tmp_path: Path) -> None:
    assert model.unreadable_files("org/model") == []
    assert model.unreadable_files(str(tmp_path / "nowhere")) == []


def test_a_model_whose_weights_this_user_may_not_read_fails_naming_them_and_the_user(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    spec = a_job().model(str(folder)).to_job().spec
    monkeypatch.setattr(os, "access", denying("model.safetensors"))
    with pytest.raises(ModelError) as raised:
        model.load_model(spec, folder.parent, torch.float32)
    assert f"cannot read model.safetensors as user {os.getuid()}" in str(raised.value)
    assert "readable by the trainer's user" in str(raised.value)


def test_a_model_that_is_readable_but_broken_keeps_the_loaders_words(folder: Path) -> None:
    import torch

    spec = a_job().model(str(folder)).to_job().spec
    with pytest.raises(ModelError, match="cannot load the model: "):
        model.load_model(spec, folder.parent, torch.float32)
