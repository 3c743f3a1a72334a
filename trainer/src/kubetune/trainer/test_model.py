"""Loading the model: a folder the preflight let through but transformers cannot load fails as a
ModelError in the loader's own words (files the trainer's user may not read are the preflight's:
test_preflight.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.trainer import model
from kubetune.trainer.errors import ModelError
from tests.support.builders import a_job

pytestmark = pytest.mark.timeout(60)


def test_a_model_that_is_readable_but_broken_keeps_the_loaders_words(tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (folder / name).write_text("{}")
    spec = a_job().model(str(folder)).to_job().spec
    with pytest.raises(ModelError, match="cannot load the model: "):
        model.load_model(spec, folder.parent, torch.float32)
