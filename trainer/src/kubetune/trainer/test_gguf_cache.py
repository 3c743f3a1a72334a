"""The GGUF conversion cache with a real GGUF file (the tiny model written as llama.cpp lays a Llama out):
converted once, loaded as the file itself would be, kept per file identity, and a killed conversion's
leftovers removed."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.training import ModelSpec
from kubetune.trainer.distributed import Rank
from kubetune.trainer.fencing import Fence
from kubetune.trainer.gguf_cache import MARKER, PARTIAL_PREFIX, PREFIX, converted
from tests.support import tiny

RANK = Rank(0, 1, 0, "cpu")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny_gguf(tmp_path_factory.mktemp("gguf"))


def convert(gguf_file: Path, checkpoints: Path) -> ModelSpec:
    import torch

    spec = ModelSpec(source=str(gguf_file.parent), gguf_file=gguf_file.name)
    return converted(spec, gguf_file.parent, checkpoints, torch.float32, RANK, Fence(checkpoints, None, RANK))


def test_the_converted_folder_loads_as_the_gguf_file_does(gguf_file: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = convert(gguf_file, tmp_path)
    folder = Path(spec.source)
    assert spec.gguf_file is None and folder.parent == tmp_path and folder.name.startswith(PREFIX)
    assert (folder / MARKER).is_file() and not list(tmp_path.glob(PARTIAL_PREFIX + "*"))
    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    expected, got = direct.state_dict(), cached.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    text = "<|im_start|>user\nMap: apple<|im_end|>\n"
    tokenizers = (
        AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name),
        AutoTokenizer.from_pretrained(folder),
    )
    assert tokenizers[0](text).input_ids == tokenizers[1](text).input_ids
    assert tokenizers[1].eos_token == tokenizers[0].eos_token


def test_a_second_attempt_loads_the_folder_without_converting(
    gguf_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = convert(gguf_file, tmp_path)
    import kubetune.trainer.gguf_cache as cache

    def refuse(*_: Any) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(cache, "_convert", refuse)
    with caplog.at_level(logging.INFO, logger="kubetune.trainer.gguf_cache"):
        assert convert(gguf_file, tmp_path) == first
    assert "converted from tiny.gguf once for this job" in caplog.text


def test_a_changed_file_is_converted_again_and_a_killed_conversion_is_cleared(gguf_file: Path, tmp_path: Path) -> None:
    first = Path(convert(gguf_file, tmp_path).source)
    leftover = tmp_path / f"{PARTIAL_PREFIX}0123456789abcdef-999"
    (leftover / "sub").mkdir(parents=True)
    stat = gguf_file.stat()
    os.utime(gguf_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was replaced
    try:
        second = Path(convert(gguf_file, tmp_path).source)
    finally:
        os.utime(gguf_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert second != first and (second / MARKER).is_file() and (first / MARKER).is_file()
    assert not leftover.exists()


def test_a_conversion_that_cannot_be_written_leaves_the_ranks_loading_the_file(
    gguf_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import PreTrainedModel

    def full_disk(*_: Any, **__: Any) -> None:
        raise RuntimeError("Error while serializing: I/O error: No space left on device")  # not an OSError

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    with caplog.at_level(logging.WARNING, logger="kubetune.trainer.gguf_cache"):
        spec = convert(gguf_file, tmp_path)
    assert (spec.source, spec.gguf_file) == (str(gguf_file.parent), gguf_file.name)
    assert list(tmp_path.iterdir()) == [] and "No space left on device" in caplog.text


def test_other_sources_are_left_as_they_are(tmp_path: Path, tiny_model: Path) -> None:
    import torch

    plain = ModelSpec(source=str(tiny_model))
    assert converted(plain, tmp_path, tmp_path, torch.float32, RANK, Fence(tmp_path, None, RANK)) is plain
    hub = ModelSpec(source="hf://org/model", gguf_file="m.gguf")
    assert converted(hub, tmp_path, tmp_path, torch.float32, RANK, Fence(tmp_path, None, RANK)) is hub
    assert list(tmp_path.iterdir()) == []
