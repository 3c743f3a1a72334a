"""Leader election's decisions, by table: acquire, renew, wait, take over, lose, step down, release."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubetune.operator.leader_election import (
    LeaseRecord,
    LeaseTimings,
    Sighting,
    Verdict,
    decide,
    lease_spec,
    may_write,
    observe,
    released_spec,
)

TIMINGS = LeaseTimings(lease_duration=10.0, renew_deadline=7.0, retry_period=2.0)
ME, OTHER = "operator-a_1", "operator-b_2"


def record(holder: str = OTHER, duration: float | None = 10.0, renewed: str = "t1", version: str = "5") -> LeaseRecord:
    return LeaseRecord(holder, duration, renewed, "t0", 3, version)


@pytest.mark.parametrize(
    ("sighting", "now", "verdict", "why"),
    [
        (None, 0.0, Verdict.CREATE, "no Lease yet"),
        (Sighting(record(holder=ME), 0.0), 100.0, Verdict.RENEW, "this replica holds it"),
        (Sighting(record(holder=""), 0.0), 0.0, Verdict.TAKE, "released: taken at once"),
        (Sighting(record(), 50.0), 55.0, Verdict.WAIT, "the holder renewed 5 s ago, on this replica's clock"),
        (Sighting(record(), 50.0), 59.9, Verdict.WAIT, "just short of the lease duration"),
        (Sighting(record(), 50.0), 60.0, Verdict.TAKE, "unchanged for the lease duration: expired"),
        (Sighting(record(duration=30.0), 50.0), 70.0, Verdict.WAIT, "the holder's own duration counts, not ours"),
        (Sighting(record(duration=None), 50.0), 60.0, Verdict.TAKE, "no duration written: ours"),
    ],
)
def test_what_a_replica_does_with_the_lease_it_read(
    sighting: Sighting | None, now: float, verdict: Verdict, why: str
) -> None:
    assert decide(sighting, ME, now, TIMINGS) is verdict, why


@pytest.mark.parametrize(
    ("previous", "read", "now", "seen_at", "why"),
    [
        (None, record(), 5.0, 5.0, "first sight starts the clock"),
        (Sighting(record(), 1.0), record(), 5.0, 1.0, "unchanged: the clock keeps running from the first sight"),
        (Sighting(record(), 1.0), record(renewed="t2", version="6"), 5.0, 5.0, "renewed by its holder: restarts"),
        (Sighting(record(), 1.0), record(holder="operator-c_3", version="6"), 5.0, 5.0, "new holder: restarts"),
    ],
)
def test_the_lease_runs_from_when_its_record_was_first_seen_unchanged(
    previous: Sighting | None, read: LeaseRecord, now: float, seen_at: float, why: str
) -> None:
    sighting = observe(previous, read, now)
    assert sighting is not None and sighting.seen_at == seen_at, why
    assert observe(previous, None, now) is None, "a deleted Lease is no sighting"


@pytest.mark.parametrize(
    ("renewed_at", "now", "allowed", "why"),
    [
        (None, 0.0, False, "never renewed: a standby never writes"),
        (100.0, 100.0, True, "just renewed"),
        (100.0, 106.9, True, "within the renew deadline"),
        (100.0, 107.0, False, "renew deadline reached: steps down"),
        (100.0, 110.0, False, "the lease itself may have expired for others by now"),
    ],
)
def test_a_leader_writes_only_within_the_renew_deadline(
    renewed_at: float | None, now: float, allowed: bool, why: str
) -> None:
    assert may_write(renewed_at, now, TIMINGS) is allowed, why


def test_a_leader_stops_writing_before_any_other_replica_may_take_its_lease() -> None:
    """The fence: the last instant the leader may write comes before the first instant a standby that saw the
    renewal (no earlier than the renew request started) may take over."""
    renew_started = 100.0
    last_write = max(t / 10 for t in range(1000, 1200) if may_write(renew_started, t / 10, TIMINGS))
    first_take = min(
        t / 10
        for t in range(1000, 1200)
        if decide(Sighting(record(), renew_started), ME, t / 10, TIMINGS) is Verdict.TAKE
    )
    assert last_write < first_take and first_take - last_write >= TIMINGS.lease_duration - TIMINGS.renew_deadline - 0.1


NOW = datetime(2026, 12, 6, 20, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("verdict", "before", "acquire", "transitions"),
    [
        (Verdict.CREATE, None, "2026-12-06T20:00:00.123456Z", 0),
        (Verdict.RENEW, record(holder=ME), "t0", 3),
        (Verdict.TAKE, record(), "2026-12-06T20:00:00.123456Z", 4),
    ],
)
def test_what_is_written_for_each_verdict(
    verdict: Verdict, before: LeaseRecord | None, acquire: str, transitions: int
) -> None:
    spec = lease_spec(verdict, before, ME, NOW, TIMINGS)
    assert spec["holderIdentity"] == ME and spec["renewTime"] == "2026-12-06T20:00:00.123456Z"
    assert spec["acquireTime"] == acquire and spec["leaseTransitions"] == transitions
    assert spec["leaseDurationSeconds"] == 10


def test_nothing_is_written_while_another_leads_and_a_release_leaves_no_holder() -> None:
    with pytest.raises(ValueError, match="another replica leads"):
        lease_spec(Verdict.WAIT, record(), ME, NOW, TIMINGS)
    released = released_spec(record(holder=ME), NOW)
    assert released["holderIdentity"] is None and released["leaseTransitions"] == 3
    assert decide(Sighting(LeaseRecord.of({"spec": released}), 0.0), OTHER, 0.0, TIMINGS) is Verdict.TAKE


@pytest.mark.parametrize(
    ("durations", "message"),
    [
        ((10.0, 7.0, 0.0), "retry period must be > 0"),
        ((10.0, 2.0, 2.0), "renew deadline .* longer than the retry period"),
        ((7.0, 7.0, 2.0), "lease duration .* longer than the renew deadline"),
    ],
)
def test_timings_that_could_elect_two_leaders_are_refused(durations: tuple[float, float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeaseTimings(*durations)
