"""What rank 0 of the current attempt says, gathered once per reconcile for the policies to decide on.

Three things come from worker 0's pod over HTTP (kubetune.operator.progress): the progress snapshot,
whether rank 0 could be reached at all (for ProgressUnavailable, kubetune.policies.progress_reach), and,
once the run has ended, the whole result (kubetune.policies.handover), which the capped termination
message may not hold. This module only gathers: it reads, and after the status is written it confirms
the result to rank 0 when the policies say the result was used (`confirmable`). The one fact the API
cannot tell, since when reads of a pod have been failing, is kept here in memory, per pod; an operator
that restarts counts again from zero (the condition, once raised, is kept by the status itself).

Rank 0 is read while the job is Running, and also while a finished job's worker 0 still runs: that is
rank 0 handing its result over. Once confirmed, the gang's pods take a moment to end (torchrun's agents
tear down after rank 0 exits); the result confirmed for a pod is remembered, so the policies keep seeing
its gang as ended and do not remove pods that are about to end by themselves (a succeeded job keeps its
pods for their logs). After an operator restart in that moment, they may be removed: only their logs
are lost, the status is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubetune.api.outcome import ProgressSnapshot, TrainerResult
from kubetune.api.status import FINISHED_PHASES, FineTuneJobStatus
from kubetune.operator.progress import ProgressRead, RankZero
from kubetune.policies.handover import confirmable, handed_over, result_waiting
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.progress_reach import ProgressReach

#: Seconds after which a failing pod that was never read again, or a confirmed one, is forgotten (it has
#: long ended).
FORGET_AFTER_SECONDS = 3600.0
#: Longest pause between two reads of a pod whose reads keep being refused or timing out, in seconds.
QUIET_MAX_SECONDS = 30.0


def _uid(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata", {})
    return str(metadata.get("uid") or metadata.get("name"))


@dataclass(frozen=True)
class RankZeroView:
    """What rank 0 said at this reconcile (all None when it was not asked)."""

    snapshot: ProgressSnapshot | None = None
    reach: ProgressReach | None = None
    """How the read went, while the job is Running; None otherwise."""
    result: TrainerResult | None = None
    """The whole result, taken from GET /result because rank 0 said it waits there."""
    pod: Mapping[str, Any] | None = field(default=None, compare=False)

    def workers(self, workers: Sequence[WorkerObservation], attempt: int) -> list[WorkerObservation]:
        """The workers as the policies must see them: worker 0 ended with the whole result, once taken."""
        return handed_over(workers, attempt, self.result) if self.result is not None else list(workers)


class RankZeroWatch:
    """Asks rank 0 of a job's current attempt; remembers since when reads of each pod fail."""

    def __init__(self, source: RankZero, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.clock = clock
        self._failing_since: dict[str, float] = {}
        self._confirmed: dict[str, tuple[TrainerResult, float]] = {}
        self._owed: dict[str, TrainerResult] = {}
        """Results used in a written status whose confirmation rank 0 did not acknowledge, by pod uid: told
        again at the next look without reading them again (rank 0 may be unreachable for a moment)."""
        self._quiet: dict[str, tuple[float, int]] = {}
        """Pods whose last read was refused or timed out, by uid: (monotonic time before which they are not
        read again, such reads in a row). A rank 0 that answers badly costs a reconcile worker up to a whole
        request timeout per read; backing off per pod keeps many such pods from holding the workers."""

    async def look(
        self, status: FineTuneJobStatus, pods: Sequence[Mapping[str, Any]], workers: Sequence[WorkerObservation]
    ) -> RankZeroView:
        running = status.phase == "Running"
        if not running and status.phase not in FINISHED_PHASES:
            return RankZeroView()
        found = next(
            ((p, w) for p, w in zip(pods, workers, strict=True) if w.attempt == status.attempt and w.index == 0), None
        )
        if found is None:
            return RankZeroView()
        pod, worker = found
        confirmed = self._confirmed.get(_uid(pod))
        if confirmed is not None and not running:  # its result is in the status: its gang is ending
            return RankZeroView(result=confirmed[0])
        if worker.state != "running":
            self._owed.pop(_uid(pod), None)  # it ended: its handover time ran out, nothing more to tell
            return RankZeroView()
        owed = self._owed.get(_uid(pod))
        if owed is not None and not running:  # used already: only the confirmation is still to be told
            return RankZeroView(result=owed, pod=pod)
        if _uid(pod) in self._quiet and self._quiet[_uid(pod)][0] > self.clock():
            return RankZeroView(pod=pod)  # not asked: what the status says about it stays as it is
        read = await self.source.read(pod)
        self._back_off(pod, bad=read.refused is not None or (read.error or "").startswith("timed out"))
        reach = self._reach(pod, read) if running else None
        if not result_waiting(read.snapshot, status.attempt):
            return RankZeroView(read.snapshot, reach, None, pod)
        taken = await self.source.result(pod)
        if taken.refused and reach is not None:  # said in the status like a refused progress answer
            reach = replace(reach, refused=taken.refused)
        return RankZeroView(read.snapshot, reach, taken.result, pod)

    async def confirm(self, view: RankZeroView, written: FineTuneJobStatus) -> bool:
        """Tell rank 0 its result was received, once the status written (`written`) has used it. Returns
        whether a confirmation is still owed: rank 0 was told but did not acknowledge (unreachable for a
        moment), so it keeps its pod until told again or its handover time runs out."""
        if view.result is None or view.pod is None or not confirmable(written):
            return False
        if not await self.source.confirm(view.pod):
            self._owed[_uid(view.pod)] = view.result
            return True
        self._owed.pop(_uid(view.pod), None)
        now = self.clock()
        self._confirmed = {k: v for k, v in self._confirmed.items() if now - v[1] < FORGET_AFTER_SECONDS}
        self._confirmed[_uid(view.pod)] = (view.result, now)
        return False

    def _back_off(self, pod: Mapping[str, Any], bad: bool) -> None:
        """After a bad read, the pod is not read again for 2, 4, ... up to QUIET_MAX_SECONDS seconds."""
        uid = _uid(pod)
        if not bad:
            self._quiet.pop(uid, None)
            return
        now = self.clock()
        self._quiet = {k: v for k, v in self._quiet.items() if now - v[0] < FORGET_AFTER_SECONDS}
        strikes = self._quiet.get(uid, (0.0, 0))[1] + 1
        self._quiet[uid] = (now + min(QUIET_MAX_SECONDS, 2.0**strikes), strikes)

    def _reach(self, pod: Mapping[str, Any], read: ProgressRead) -> ProgressReach | None:
        if not read.address:
            return None  # no pod IP yet: nothing was tried
        uid = _uid(pod)
        now = self.clock()
        self._failing_since = {k: v for k, v in self._failing_since.items() if now - v < FORGET_AFTER_SECONDS}
        if read.error is None:
            self._failing_since.pop(uid, None)
            return ProgressReach(True, read.address, refused=read.refused or "")
        since = self._failing_since.setdefault(uid, now)
        return ProgressReach(False, read.address, read.error, now - since)
