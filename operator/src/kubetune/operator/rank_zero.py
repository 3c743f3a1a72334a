"""What rank 0 of the current attempt says, gathered once per reconcile for the policies to decide on.

Three things come from worker 0's pod over HTTP (kubetune.operator.progress): the progress snapshot,
whether rank 0 could be reached at all (for ProgressUnavailable, kubetune.policies.progress_reach), and,
once the run has ended, the whole result (kubetune.policies.handover), which the capped termination
message may not hold. The first two are read outside the reconcile by the progress poller
(kubetune.operator.progress_poller), which this module tells which pod to read (`track`) and takes the
latest read from; the reconcile never waits on a progress read. The result is read here, once per run,
when the latest snapshot says it waits; after the status is written it is confirmed to rank 0 when the
policies say the result was used (`confirmable`). Since when reads of a pod have been failing, the one
fact the API cannot tell, is kept in memory by the poller; an operator that restarts counts again from
zero (the condition, once raised, is kept by the status itself).

Rank 0 is read while the job is Running, and also while a finished job's worker 0 still runs: that is
rank 0 handing its result over. Once confirmed, the gang's pods take a moment to end (torchrun's agents
tear down after rank 0 exits); the result confirmed for a pod is remembered, so the policies keep seeing
its gang as ended and do not remove pods that are about to end by themselves (a succeeded job keeps its
pods for their logs). After an operator restart in that moment, they may be removed: only their logs
are lost, the status is written.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubetune.api.outcome import ProgressSnapshot, TrainerResult
from kubetune.api.status import FINISHED_PHASES, FineTuneJobStatus
from kubetune.operator.progress import ProgressRead, RankZero
from kubetune.operator.progress_poller import ProgressPoller, pod_uid
from kubetune.policies.handover import confirmable, handed_over, result_waiting
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.progress_reach import ProgressReach

#: Seconds after which a confirmed pod is forgotten (its gang has long ended).
FORGET_AFTER_SECONDS = 3600.0


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
    """Asks rank 0 of a job's current attempt, through the poller's latest read; takes and confirms the result."""

    def __init__(self, source: RankZero, poller: ProgressPoller) -> None:
        self.source = source
        self.poller = poller
        self.clock = poller.clock
        self._confirmed: dict[str, tuple[TrainerResult, float]] = {}
        self._owed: dict[str, TrainerResult] = {}
        """Results used in a written status whose confirmation rank 0 did not acknowledge, by pod uid: told
        again at the next look without reading them again (rank 0 may be unreachable for a moment)."""

    async def look(
        self,
        key: Hashable,
        status: FineTuneJobStatus,
        pods: Sequence[Mapping[str, Any]],
        workers: Sequence[WorkerObservation],
    ) -> RankZeroView:
        """What rank 0 of job `key` says now; its worker 0 is read from now on while it may say something."""
        running = status.phase == "Running"
        found = next(
            ((p, w) for p, w in zip(pods, workers, strict=True) if w.attempt == status.attempt and w.index == 0), None
        )
        if (not running and status.phase not in FINISHED_PHASES) or found is None:
            self.poller.untrack(key)
            return RankZeroView()
        pod, worker = found
        uid = pod_uid(pod)
        confirmed = self._confirmed.get(uid)
        if confirmed is not None and not running:  # its result is in the status: its gang is ending
            self.poller.untrack(key)
            return RankZeroView(result=confirmed[0])
        if worker.state != "running":
            self.poller.untrack(key)
            self._owed.pop(uid, None)  # it ended: its handover time ran out, nothing more to tell
            return RankZeroView()
        owed = self._owed.get(uid)
        if owed is not None and not running:  # used already: only the confirmation is still to be told
            return RankZeroView(result=owed, pod=pod)
        self.poller.track(key, pod)
        read, failing_since = self.poller.latest(key, pod)
        if read is None:
            return RankZeroView(pod=pod)  # not read yet: what the status says about it stays as it is
        reach = self._reach(read, failing_since) if running else None
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
            self._owed[pod_uid(view.pod)] = view.result
            return True
        self._owed.pop(pod_uid(view.pod), None)
        now = self.clock()
        self._confirmed = {k: v for k, v in self._confirmed.items() if now - v[1] < FORGET_AFTER_SECONDS}
        self._confirmed[pod_uid(view.pod)] = (view.result, now)
        return False

    def _reach(self, read: ProgressRead, failing_since: float | None) -> ProgressReach | None:
        if not read.address:
            return None  # no pod IP yet: nothing was tried
        if read.error is None:
            return ProgressReach(True, read.address, refused=read.refused or "")
        since = failing_since if failing_since is not None else self.clock()
        return ProgressReach(False, read.address, read.error, self.clock() - since)
