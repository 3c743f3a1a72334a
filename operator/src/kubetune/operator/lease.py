"""The operator's side of leader election: read and write its Lease, wait to lead, keep leading, fence writes.

The decisions are kubetune.operator.leader_election's (pure, tested by table); this module only reads
the Lease, writes what they say and keeps the times. Every API write of the operator asks `check()`
first (kubetune.operator.kube), so a leader that could not renew in time writes nothing more, even when
it was frozen (SIGSTOP, a paused VM) and wakes after another replica took over: its monotonic clock
kept running, its last renew is too old, the write is refused before it is sent.

The Lease lives in the operator's namespace (the chart's Role allows get/create/update of it there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kubetune.operator import metrics
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

logger = logging.getLogger(__name__)


class NotLeading(Exception):
    """A write refused because this replica does not (or no longer surely) hold the Lease."""


@dataclass(frozen=True)
class LeaderElection:
    """Where the Lease is and who this replica is."""

    namespace: str
    """The operator's namespace (the chart's release namespace)."""
    lease: str = "kubetune-operator"
    """Name of the Lease."""
    identity: str = ""
    """This replica's name in the Lease (and in its API requests' User-Agent): the pod name and a random
    suffix, so that a restarted container is a new holder."""
    timings: LeaseTimings = field(default_factory=LeaseTimings)


class Elector:
    """One replica's candidacy: `acquire()` waits until it leads, `keep_leading()` returns when it lost."""

    def __init__(
        self, api_client: k8s.ApiClient, election: LeaderElection, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.election = election
        self.clock = clock
        self._leases = k8s.CoordinationV1Api(api_client)
        self._sighting: Sighting | None = None
        self._renewed_at: float | None = None
        self._record: LeaseRecord | None = None
        self.holder = ""
        """Who holds the Lease, as last read ("" unknown or none)."""

    @property
    def identity(self) -> str:
        return self.election.identity

    def may_write(self) -> bool:
        return may_write(self._renewed_at, self.clock(), self.election.timings)

    def check(self) -> None:
        """Raise NotLeading unless this replica may write now (called before every API write)."""
        if not self.may_write():
            raise NotLeading(f"{self.identity} does not hold the Lease {self.election.lease}: the write is not sent")

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try every retry period until this replica leads (True) or `stop` is set (False)."""
        logger.info(
            "standing by: %s waits for the Lease %s/%s", self.identity, self.election.namespace, self.election.lease
        )
        while not stop.is_set():
            if await self.try_acquire_or_renew():
                logger.info("%s leads (Lease %s/%s)", self.identity, self.election.namespace, self.election.lease)
                metrics.record_leader(True)
                return True
            await _wait(stop, self.election.timings.retry_period)
        return False

    async def keep_leading(self, stop: asyncio.Event) -> bool:
        """Renew every retry period; returns False as soon as the renew deadline passed without a renewal (or
        another replica holds the Lease), True when `stop` is set while still leading."""
        while not stop.is_set():
            await _wait(stop, self.election.timings.retry_period)
            if stop.is_set():
                break
            renewed = await self.try_acquire_or_renew()
            if not renewed and (not self.may_write() or (self.holder and self.holder != self.identity)):
                self._renewed_at = None
                metrics.record_leader(False)
                logger.error(
                    "%s lost the Lease %s (holder now %r): it stops writing and exits",
                    self.identity, self.election.lease, self.holder or "unknown",
                )  # fmt: skip
                return False
        return True

    async def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, decide, write. True when this replica holds it afterwards."""
        started = self.clock()
        try:
            lease = await self._request(
                lambda timeout: self._leases.read_namespaced_lease(
                    self.election.lease, self.election.namespace, _preload_content=False, _request_timeout=timeout
                )
            )
        except ApiException as error:
            if error.status != 404:
                logger.warning("reading the Lease %s failed: %s", self.election.lease, _reason(error))
                return False
            lease = None
        if self.clock() - started > self.election.timings.retry_period:
            # read before a freeze (SIGSTOP, a paused VM) and answered after: what it says may be long past,
            # and a write decided on it would only be refused (409) or, worse, be late; the next round reads again
            logger.warning("the Lease read took %.1f s: not acted upon", self.clock() - started)
            return False
        record = LeaseRecord.of(lease) if lease is not None else None
        self._sighting = observe(self._sighting, record, started)
        self.holder = record.holder if record is not None else ""
        verdict = decide(self._sighting, self.identity, started, self.election.timings)
        if verdict is Verdict.WAIT:
            return False
        spec = lease_spec(verdict, record, self.identity, datetime.now(UTC), self.election.timings)
        written = await self._write(spec, record)
        if written is None:
            return False
        self._renewed_at = started  # the fence counts from when the renewal was sent, not answered
        self._record = LeaseRecord.of(written)
        self.holder = self.identity
        if verdict is Verdict.TAKE:
            logger.info("%s took the Lease from %r", self.identity, record.holder if record else "")
        return True

    async def release(self) -> None:
        """Give the Lease up on purpose (stopping): the standby takes over at its next try."""
        if self._record is None or not self.may_write():
            return
        self._renewed_at = None
        metrics.record_leader(False)
        written = await self._write(released_spec(self._record, datetime.now(UTC)), self._record)
        logger.info("%s released the Lease %s%s", self.identity, self.election.lease, "" if written else " (failed)")

    async def _write(self, spec: dict[str, Any], record: LeaseRecord | None) -> dict[str, Any] | None:
        """Create the Lease (no `record`) or replace it at `record`'s version; None when refused (409: another
        replica wrote first) or failed."""
        metadata: dict[str, Any] = {"name": self.election.lease, "namespace": self.election.namespace}
        if record is not None:
            metadata["resourceVersion"] = record.resource_version
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
        namespace, name = self.election.namespace, self.election.lease
        try:
            if record is None:
                return await self._request(
                    lambda timeout: self._leases.create_namespaced_lease(
                        namespace, cast(Any, body), _preload_content=False, _request_timeout=timeout
                    )
                )
            return await self._request(
                lambda timeout: self._leases.replace_namespaced_lease(
                    name, namespace, cast(Any, body), _preload_content=False, _request_timeout=timeout
                )
            )
        except ApiException as error:
            if error.status != 409:
                logger.warning("writing the Lease %s failed: %s", name, _reason(error))
            return None

    async def _request(self, call: Callable[[float], Any]) -> dict[str, Any]:
        """One request, in a thread, no longer than a retry period; connection failures count as HTTP 0."""
        timeout = self.election.timings.retry_period
        try:
            response = await asyncio.to_thread(call, timeout)
        except ApiException:
            raise
        except Exception as error:  # urllib3's and the socket's, as one "no answer"
            raise ApiException(status=0, reason=str(error)) from error
        body: dict[str, Any] = json.loads(response.data or b"{}")
        return body


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _reason(error: ApiException) -> str:
    return f"HTTP {error.status}: {error.reason}" if error.status else str(error.reason)
