"""The hang watch against a real TCPStore (the kind torchrun's agent serves): beats travel, a rank that
stops beating is named by the lowest live judge, a rank that finished is never a hang, and a model's
forward passes count as moves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from kubetune.policies.hang import Hang, RankBeat
from kubetune.trainer.distributed import Rank
from kubetune.trainer.hang_watch import HangWatch, interval_seconds


@pytest.fixture
def server() -> Any:
    import torch.distributed as dist

    store: Any = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))  # type: ignore[attr-defined]
    yield store


def watch_of(server: Any, rank: int, world: int, configured: int | None = 20) -> HangWatch:
    import torch.distributed as dist

    client: Any = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=10))  # type: ignore[attr-defined]
    store: Any = dist.PrefixStore("kubetune/beat/1", client)  # type: ignore[attr-defined]
    reported: list[Hang] = []
    watch = HangWatch(Rank(rank, world, rank, "cpu"), configured, store, reported.append)
    watch._post(finished=False)
    return watch


def settled(watches: list[HangWatch], step: int, now: float = 100.0) -> None:
    """Every rank has done `step` and every judge has seen all their beats by `now`."""
    for watch in watches:
        watch.motion.stepped(step, 0.4)
    for at in (now - 1, now):
        assert [w.check(at) for w in watches] == [None] * len(watches)


def run_until_reported(live: list[HangWatch], start: float, moving: HangWatch | None = None) -> tuple[int, Hang, float]:
    """Beat every `live` watch each 5 s (as their threads would) from `start` until one reports a hang;
    `moving` keeps moving meanwhile. The reporting rank, its hang and when."""
    for tick in range(1, 20):
        if moving is not None:
            moving.motion.moved()
        for watch in live:
            hang = watch.check(start + 5 * tick)
            if hang is not None:
                return watch.rank.rank, hang, start + 5 * tick
    raise AssertionError("no hang reported in 95 s")


def test_a_rank_that_stops_beating_is_named_by_rank_0_alone(server: Any) -> None:
    watches = [watch_of(server, r, 3) for r in range(3)]
    settled(watches, 5)
    reporter, hang, at = run_until_reported(watches[:2], 100.0, moving=watches[0])  # rank 2 beats no more
    assert reporter == 0 and hang.stopped == (2,) and hang.step == 5, hang
    assert watches[1].check(at) is None, "rank 1 sees the same hang but leaves the report to rank 0"
    assert hang.message.startswith("rank 2 stopped reporting (rank 2 20 s ago at step 5"), hang.message


def test_rank_1_reports_when_rank_0_itself_stopped(server: Any) -> None:
    watches = [watch_of(server, r, 2) for r in range(2)]
    settled(watches, 1)
    reporter, hang, _ = run_until_reported(watches[1:], 100.0)
    assert reporter == 1 and hang.stopped == (0,), hang


def test_a_gang_of_still_ranks_hangs_and_a_finished_rank_never_does(server: Any) -> None:
    watches = [watch_of(server, r, 2) for r in range(2)]
    settled(watches, 3)
    reporter, hang, _ = run_until_reported(watches, 100.0)
    assert reporter == 0 and hang.stopped == () and "no rank has moved for 20 s at step 3" in hang.message, hang
    watches[1].finish()
    assert watches[0].check(150.0) is None


def test_a_beat_late_from_the_watch_thread_never_undoes_the_last_one(server: Any) -> None:
    watch = watch_of(server, 0, 1)
    watch.finish()
    watch._post(finished=False)  # the thread's beat, computed before `finish`, posted after it
    assert RankBeat.from_json(watch.store.get("0")).finished


def test_checkpoint_writes_are_not_judged_by_moves(server: Any) -> None:
    watches = [watch_of(server, r, 2) for r in range(2)]
    settled(watches, 3)
    with watches[0].motion.unwatched("checkpointing"):
        for tick in range(1, 10):
            assert [w.check(100.0 + 5 * tick) for w in watches] == [None, None]
    assert watches[0].motion.paused is None


# peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` (their business, not ours).
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
@pytest.mark.parametrize("lora", [False, True])
def test_forward_passes_count_as_moves(tiny_model: Any, server: Any, lora: bool) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model)
    if lora:  # peft's generate calls the wrapped model's forward, not the wrapper's
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    watch = watch_of(server, 0, 1)
    watch.watch_model(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
        assert watch.motion.moves == 1
        model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert watch.motion.moves == 4, "one move per forward pass, each generated token's included"


@pytest.mark.parametrize("configured, expected", [(None, 5.0), (10, 2.0), (600, 5.0)])
def test_the_beat_interval_is_a_fifth_of_the_timeout_within_bounds(configured: int | None, expected: float) -> None:
    assert interval_seconds(configured) == expected
