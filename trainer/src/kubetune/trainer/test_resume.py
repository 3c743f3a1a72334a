"""Resume you can trust: the real Checkpointer (save, resume, prune) with a stand-in for DeepSpeed's engine,
in one process (a gang of one: the collectives are no-ops)."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.outcome import ExitReason
from kubetune.trainer.checkpoint import DEEPSPEED_TAG, Checkpointer, published, step_name
from kubetune.trainer.distributed import Rank
from kubetune.trainer.errors import CheckpointUnreadable, ConfigError, classify
from kubetune.trainer.integrity import MANIFEST_FILE, MANIFEST_KEY, STATE_FILE, Trust

pytestmark = pytest.mark.timeout(60)

WEIGHTS = f"{DEEPSPEED_TAG}/mp_rank_00_model_states.pt"


class FakeEngine:
    """Writes and reads checkpoint files as DeepSpeed's engine does, minus the tensors. `failures` maps a
    step's folder name to what loading it raises."""

    def __init__(self) -> None:
        self.step = 0
        self.loaded: str | None = None
        self.failures: dict[str, BaseException] = {}

    def save_checkpoint(self, path: str, tag: str, save_latest: bool) -> None:
        folder = Path(path) / tag
        folder.mkdir()
        (folder / "mp_rank_00_model_states.pt").write_bytes(f"weights of step {self.step}".encode() * 100)
        (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 300)

    def load_checkpoint(self, path: str, tag: str, **_: Any) -> tuple[str | None, dict[str, Any]]:
        name = Path(path).name
        if name in self.failures:
            raise self.failures[name]
        if not (Path(path) / tag).is_dir():
            return None, {}
        self.loaded = name
        return path, {}


def checkpointer(directory: Path, keep: int = 5) -> Checkpointer:
    return Checkpointer(directory, keep, Rank(0, 1, 0, "cpu"))


def save(directory: Path, *steps: int, keep: int = 5) -> Checkpointer:
    """A run that saved `steps`, in order."""
    saver, engine = checkpointer(directory, keep), FakeEngine()
    for step in steps:
        engine.step = step
        saver.save(engine, step, {"data": {"next_step": step}}, None)
    return saver


def make_legacy(folder: Path) -> None:
    """Turn a checkpoint into one written before manifests existed."""
    (folder / MANIFEST_FILE).unlink()
    state = json.loads((folder / STATE_FILE).read_text())
    del state[MANIFEST_KEY]
    (folder / STATE_FILE).write_text(json.dumps(state))


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def damage(directory: Path, step: int, how: str) -> None:
    folder = directory / step_name(step)
    if how == "same-size":
        flip_a_byte(folder / WEIGHTS)
    elif how == "truncated":
        (folder / WEIGHTS).write_bytes(b"w")
    elif how == "manifest missing":
        (folder / MANIFEST_FILE).unlink()
    elif how == "legacy":
        make_legacy(folder)


@pytest.mark.parametrize(
    ("saved", "damaged", "resumed", "trust", "skipped"),
    [
        ([4, 8], {}, 8, Trust.VERIFIED, []),
        ([4, 8], {8: "same-size"}, 4, Trust.VERIFIED, [f"step-00000008 ({WEIGHTS} does not match its SHA-256"]),
        ([4, 8], {8: "truncated"}, 4, Trust.VERIFIED, [f"step-00000008 ({WEIGHTS} has 1 bytes"]),
        ([4, 8], {8: "manifest missing"}, 4, Trust.VERIFIED, ["step-00000008 (manifest.json is missing)"]),
        ([4, 8, 12], {12: "same-size", 8: "manifest missing"}, 4, Trust.VERIFIED, ["step-00000012", "step-00000008"]),
        # Written before manifests: usable, checked by size, and said so.
        ([4, 8], {4: "legacy", 8: "legacy"}, 8, Trust.LEGACY, []),
        # A verified checkpoint is preferred to a newer legacy one, which is named.
        ([4, 8], {8: "legacy"}, 4, Trust.VERIFIED, ["step-00000008 (no manifest (older kubetune)"]),
        ([4, 8], {4: "legacy", 8: "same-size"}, 4, Trust.LEGACY, ["step-00000008"]),
    ],
)
def test_resume_takes_the_newest_checkpoint_that_verifies_and_names_the_rest(
    tmp_path: Path, saved: list[int], damaged: dict[int, str], resumed: int, trust: Trust, skipped: list[str]
) -> None:
    save(tmp_path, *saved)
    for step, how in damaged.items():
        damage(tmp_path, step, how)
    engine = FakeEngine()
    found = checkpointer(tmp_path).resume(engine)
    assert found is not None
    assert (found.step, found.trust, engine.loaded) == (resumed, trust, step_name(resumed))
    assert found.state["data"] == {"next_step": resumed}
    assert len(found.skipped) == len(skipped)
    for named, expected in zip(found.skipped, skipped, strict=True):
        assert str(named).startswith(expected), (str(named), expected)
    note = found.note or ""
    assert all(s.split(" (")[0] in note for s in skipped)
    assert ("checked by size only" in note) == (trust is Trust.LEGACY)


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert checkpointer(tmp_path).resume(FakeEngine()) is None


def test_when_every_checkpoint_is_damaged_the_job_fails_for_good_naming_each(tmp_path: Path) -> None:
    save(tmp_path, 4, 8)
    damage(tmp_path, 4, "truncated")
    damage(tmp_path, 8, "same-size")
    with pytest.raises(ConfigError) as caught:
        checkpointer(tmp_path).resume(FakeEngine())
    assert "step-00000008" in caught.value.message and "step-00000004" in caught.value.message
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError(errno.EIO, "Input/output error"), ExitReason.CHECKPOINT_UNREADABLE),
        (OSError(errno.ESTALE, "Stale file handle"), ExitReason.CHECKPOINT_UNREADABLE),
        (PermissionError(errno.EACCES, "Permission denied"), ExitReason.CHECKPOINT_UNREADABLE),
        (MemoryError(), ExitReason.OUT_OF_MEMORY),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), ExitReason.OUT_OF_MEMORY),
        (
            RuntimeError("[../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer"),
            ExitReason.PEER_LOST,
        ),
    ],
)
def test_an_error_that_proves_no_damage_is_retryable_and_does_not_fall_back(
    tmp_path: Path, error: BaseException, reason: ExitReason
) -> None:
    save(tmp_path, 4, 8)
    engine = FakeEngine()
    engine.failures[step_name(8)] = error
    with pytest.raises(BaseException) as caught:
        checkpointer(tmp_path).resume(engine)
    found, _, retryable = classify(caught.value)
    assert (found, retryable) == (reason, True)
    assert engine.loaded is None, "fell back to an older checkpoint on an error that proves nothing"


def test_an_io_error_while_verifying_is_retryable_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.trainer import integrity

    save(tmp_path, 4, 8)

    def unreadable(path: Path) -> str:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(integrity, "sha256_of", unreadable)
    with pytest.raises(CheckpointUnreadable, match=r"step-00000008.*Input/output error"):
        checkpointer(tmp_path).resume(FakeEngine())


@pytest.mark.parametrize(
    "error",
    [RuntimeError("Error(s) in loading state_dict: size mismatch"), FileNotFoundError(2, "No such file", "x.pt")],
    ids=["does not fit", "a file it needs is missing"],
)
def test_a_checkpoint_that_does_not_load_is_skipped(tmp_path: Path, error: BaseException) -> None:
    save(tmp_path, 4, 8)
    engine = FakeEngine()
    engine.failures[step_name(8)] = error
    found = checkpointer(tmp_path).resume(engine)
    assert found is not None and engine.loaded == step_name(4)
    assert [s.name for s in found.skipped] == [step_name(8)] and "it does not load" in found.skipped[0].reason


def test_pruning_after_a_fallback_keeps_the_resumed_and_every_fresh_checkpoint(tmp_path: Path) -> None:
    """The issue's case with keep: 1: step 100 damaged, resumed from 80, then 90 and 100 saved again."""
    save(tmp_path, 80, 100, keep=5)
    damage(tmp_path, 100, "same-size")
    run, engine = checkpointer(tmp_path, keep=1), FakeEngine()
    assert (found := run.resume(engine)) is not None and found.step == 80
    for step, expected in [(90, [100, 90, 80]), (95, [100, 95, 80]), (100, [100, 80]), (104, [104, 80])]:
        engine.step = step
        run.save(engine, step, {"data": {"next_step": step}}, None)
        assert [s for s, _ in published(tmp_path)] == expected, f"after saving {step}"
    assert checkpointer(tmp_path).resume(FakeEngine()) is not None, "the newest checkpoint verifies"
