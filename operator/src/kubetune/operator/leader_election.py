"""Who leads: the decisions of leader election on a `coordination.k8s.io` Lease, as pure functions.

Why: the chart runs two operator replicas, and a Deployment alone does not guarantee one copy (a node
that stops reporting gets its pod replaced while the old one may still run). Exactly one replica may
reconcile and write; the other waits, ready, and takes over when the leader is gone.

The protocol is client-go's (kube-controller-manager's, Kueue's, JobSet's), so a platform team reads the
Lease as it reads theirs:
- a candidate takes the Lease when it does not exist, when its holder released it (no holder), or when
  the holder's record has not changed for the record's `leaseDurationSeconds`, measured on the
  candidate's own monotonic clock from when it first saw that record: clocks of two machines are never
  compared;
- the leader renews every `retry_period`; every write of the Lease carries its resourceVersion, so of
  two candidates in one round only one wins (the other gets 409);
- the leader may write only until `renew_deadline` after the START of its last successful renew, which
  is less than the lease duration: it stops writing, and exits, before any other replica can see the
  Lease as expired (`may_write`, checked before every API write: kubetune.operator.lease).

Why not the `kubernetes` client's `leaderelection` package: it runs threads on the client's global
default configuration, sleeps instead of being cancellable, and has no "may I still write" answer to
fence writes with, which is the whole point here. The decisions are these few functions, tested by table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class LeaseTimings:
    """How long a Lease lasts, how long its holder keeps writing without renewing it, how often it is tried."""

    lease_duration: float = 10.0
    """Seconds a Lease that is not renewed stays its holder's, on the other replicas' clocks: after a leader is
    killed, its standby leads within this plus `retry_period`."""
    renew_deadline: float = 7.0
    """Seconds the leader keeps writing after the start of its last successful renew; it then stops writing
    and exits. Less than `lease_duration`: the difference is the margin against a slow clock or a request
    already sent."""
    retry_period: float = 2.0
    """Seconds between two renewals by the leader, and between two tries of a standby (also the timeout of
    one request to the Lease)."""

    def __post_init__(self) -> None:
        if not self.retry_period > 0:
            raise ValueError(f"retry period must be > 0 seconds, not {self.retry_period}")
        if not self.renew_deadline > self.retry_period:
            raise ValueError(
                f"renew deadline ({self.renew_deadline} s) must be longer than the retry period ({self.retry_period} s)"
            )
        if not self.lease_duration > self.renew_deadline:
            raise ValueError(
                f"lease duration ({self.lease_duration} s) must be longer than the renew deadline "
                f"({self.renew_deadline} s): a leader must stop writing before others may take its Lease"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (its spec and resourceVersion)."""

    holder: str
    """holderIdentity; "" when released or never held."""
    duration: float | None
    """leaseDurationSeconds as the holder wrote it; None when unset."""
    renew_time: str | None
    acquire_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(duration) if duration else None,
            renew_time=spec.get("renewTime"),
            acquire_time=spec.get("acquireTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )


@dataclass(frozen=True)
class Sighting:
    """A record and when (monotonic seconds) this replica first saw it unchanged."""

    record: LeaseRecord
    seen_at: float


class Verdict(Enum):
    CREATE = "create"
    """No Lease: create it, holding it."""
    RENEW = "renew"
    """This replica holds it: write a new renew time."""
    TAKE = "take"
    """Released or expired: write this replica as holder (one more transition)."""
    WAIT = "wait"
    """Another replica holds it and its lease has not run out."""


def observe(previous: Sighting | None, record: LeaseRecord | None, now: float) -> Sighting | None:
    """The sighting after reading `record` at `now`: kept while the record is unchanged (the lease runs
    from when it was first seen), renewed as soon as anything in it changes."""
    if record is None:
        return None
    if previous is not None and previous.record == record:
        return previous
    return Sighting(record, now)


def decide(sighting: Sighting | None, identity: str, now: float, timings: LeaseTimings) -> Verdict:
    """What a replica does with the Lease it just read (`sighting`: None when there is none)."""
    if sighting is None:
        return Verdict.CREATE
    record = sighting.record
    if record.holder == identity:
        return Verdict.RENEW
    if not record.holder:
        return Verdict.TAKE
    duration = record.duration or timings.lease_duration
    return Verdict.TAKE if now - sighting.seen_at >= duration else Verdict.WAIT


def may_write(renewed_at: float | None, now: float, timings: LeaseTimings) -> bool:
    """Whether the leader may still write: its last successful renew started less than the renew deadline ago."""
    return renewed_at is not None and now - renewed_at < timings.renew_deadline


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_spec(
    verdict: Verdict, record: LeaseRecord | None, identity: str, now: datetime, timings: LeaseTimings
) -> dict[str, Any]:
    """The spec this replica writes for `verdict` (CREATE, RENEW or TAKE)."""
    if verdict is Verdict.WAIT:
        raise ValueError("nothing is written while another replica leads")
    stamp = micro_time(now)
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": math.ceil(timings.lease_duration),
        "renewTime": stamp,
        "acquireTime": stamp,
        "leaseTransitions": 0,
    }
    if record is not None and verdict is Verdict.RENEW:
        spec |= {"acquireTime": record.acquire_time or stamp, "leaseTransitions": record.transitions}
    elif record is not None:
        spec["leaseTransitions"] = record.transitions + 1
    return spec


def released_spec(record: LeaseRecord, now: datetime) -> dict[str, Any]:
    """The spec a leader writes when it stops on purpose (SIGTERM, an upgrade): no holder, so that a standby
    takes over at its next try instead of after the lease duration (client-go's ReleaseOnCancel)."""
    stamp = micro_time(now)
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "renewTime": stamp,
        "acquireTime": stamp,
        "leaseTransitions": record.transitions,
    }
