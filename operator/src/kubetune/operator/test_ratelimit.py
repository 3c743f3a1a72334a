"""The write limit: a burst passes at once, then writes are spaced at the sustained rate."""

from __future__ import annotations

import asyncio

import pytest

from kubetune.operator.ratelimit import TokenBucket, WriteLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_sustained_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(WriteLimit(per_second=10.0, burst=3), clock)
    waits = [bucket.wait_for_token() for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2])  # first come, first served, spaced by 1/rate


def test_tokens_refill_but_never_above_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(WriteLimit(per_second=10.0, burst=2), clock)
    bucket.wait_for_token()
    bucket.wait_for_token()
    clock.now += 60.0
    assert [bucket.wait_for_token() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])


@pytest.mark.parametrize(("per_second", "burst"), [(0.0, 1), (-1.0, 5), (5.0, 0)])
def test_nonsense_limits_are_refused(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError, match="write limit"):
        TokenBucket(WriteLimit(per_second=per_second, burst=burst))


async def test_acquire_sleeps_only_when_the_bucket_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", record)  # (the bucket sleeps through asyncio.sleep)
    clock = Clock()
    bucket = TokenBucket(WriteLimit(per_second=4.0, burst=1), clock)
    await bucket.acquire()
    await bucket.acquire()
    await bucket.acquire()
    assert slept == pytest.approx([0.25, 0.5])  # the first from the burst; then spaced by 1/rate


def test_low_priority_writes_leave_half_the_burst_to_the_others() -> None:
    clock = Clock()
    bucket = TokenBucket(WriteLimit(per_second=10.0, burst=10), clock)
    taken = 0
    while bucket.wait_for_spare_token() == 0.0:
        taken += 1
    assert taken == 5  # half the burst is left for creates and restarts
    assert [bucket.wait_for_token() for _ in range(5)] == [0.0] * 5  # which pass at once
    assert bucket.wait_for_spare_token() == pytest.approx(0.6)  # low: until 6 tokens are back (5 kept + 1)
    clock.now += 0.61
    assert bucket.wait_for_spare_token() == 0.0


async def test_a_low_priority_write_waits_while_the_others_use_the_reserve() -> None:
    bucket = TokenBucket(WriteLimit(per_second=1000.0, burst=4))
    for _ in range(4):
        assert bucket.wait_for_token() == 0.0
    loop = asyncio.get_running_loop()
    began = loop.time()
    await bucket.acquire(low=True)
    assert loop.time() - began >= 0.003 - 0.0005  # 3 tokens back at 1,000 per second (2 reserved + 1)
