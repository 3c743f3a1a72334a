"""Whether the operator can read rank 0's progress, as the condition ProgressUnavailable.

The operator reads progress, metrics and the whole result from rank 0's pod on TCP 9400. A namespace with
a default-deny NetworkPolicy drops those requests, and without a word the job would show no progress and
end with a result cut to what fits its termination message. So a read that fails at the connection (refused,
reset, timed out) for longer than a bound sets ProgressUnavailable=True with the fix in its message, and
the first read that works again sets it False (ProgressReadable). An answer the operator refuses (larger
than its cap, not the protocol's shape: kubetune.operator.progress) sets it True at once, with reason
RankZeroAnswerRefused: rank 0 runs an image its author chose, and a wrong answer is not a network's fault.

The bound (the operator's `progress_unreachable_after`, in seconds) is longer than a trainer takes to start
serving (imports and rendezvous, during which the port is closed), so a starting trainer does not raise it.
How long reads have failed is counted by the operator, which alone sees the attempts (it is not in the
status); after an operator restart it counts again from zero, while a condition already True stays True
as long as reads keep failing, so the status is the memory of the raised state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason
from kubetune.policies.reconcile import Decision
from kubetune.policies.status import clear_condition, find_condition, set_condition, transition_events

#: The trainer's progress port (builders.METRICS_PORT): named in the message's fix.
PROGRESS_PORT = 9400
#: What users change to let the operator in: the Helm chart's value (see charts/kubetune/values.yaml).
CHART_TOGGLE = "networkPolicy.enabled=true"


@dataclass(frozen=True)
class ProgressReach:
    """How the latest read of rank 0's progress went."""

    reachable: bool
    """Rank 0 answered (whatever it answered)."""
    address: str = ""
    """The URL read, e.g. http://10.1.2.3:9400/progress."""
    error: str = ""
    """Why not, when unreachable: e.g. `timed out after 2.0s`, `connection refused`."""
    failing_for: float = 0.0
    """Seconds since reads of this worker began failing (0 when reachable)."""
    refused: str = ""
    """Rank 0 answered, but the operator refused the answer: e.g. `GET /progress answered with more than
    65536 bytes (the operator reads at most 65536)`. Empty when nothing was refused."""


def unreachable_message(reach: ProgressReach) -> str:
    return (
        f"the operator cannot reach rank 0's progress at {reach.address} ({reach.error}): no progress, metrics "
        f"or whole result can be read (a result larger than the termination message is cut). Usually a "
        f"NetworkPolicy blocks it: allow ingress from the operator's pods to the trainer pods "
        f"(app.kubernetes.io/component: trainer) on TCP {PROGRESS_PORT}; the chart does it for each attempt "
        f"with {CHART_TOGGLE} (its default), unless the operator runs outside the cluster"
    )


def refused_message(reach: ProgressReach) -> str:
    return (
        f"the operator refused what rank 0 answered at {reach.address}: {reach.refused}. The trainer image does "
        f"not answer as kubetune's trainer does (a modified image?): no progress or whole result is read from "
        f"it, and the job's outcome is taken from its termination message"
    )


def apply_reach(
    status: FineTuneJobStatus, reach: ProgressReach | None, now: datetime, after: float
) -> FineTuneJobStatus:
    """The status with ProgressUnavailable updated from `reach` (None: no read was tried; nothing
    changes). `after`: seconds reads must fail before the condition is raised."""
    if reach is None:
        return status
    if reach.refused:
        message = refused_message(reach)
        return set_condition(status, ConditionType.PROGRESS_UNAVAILABLE, "True", Reason.RANK_ZERO_REFUSED, message, now)
    if reach.reachable:
        message = "the operator reads rank 0's progress again"
        return clear_condition(status, ConditionType.PROGRESS_UNAVAILABLE, Reason.PROGRESS_READABLE, message, now)
    current = find_condition(status, ConditionType.PROGRESS_UNAVAILABLE)
    raised = current is not None and current.status == "True"
    if raised and current is not None and current.reason == Reason.RANK_ZERO_REFUSED:
        return status  # a rank 0 that broke the protocol stays named so until it answers well (no flapping)
    if reach.failing_for < after and not raised:
        return status
    message = unreachable_message(reach)
    return set_condition(status, ConditionType.PROGRESS_UNAVAILABLE, "True", Reason.PROGRESS_UNREACHABLE, message, now)


def with_reach(
    decision: Decision, previous: FineTuneJobStatus, reach: ProgressReach | None, now: datetime, after: float
) -> Decision:
    """`decision` with ProgressUnavailable applied to its status, and its events derived again from the
    status written last time (`previous`)."""
    status = apply_reach(decision.status, reach, now, after)
    if status == decision.status:
        return decision
    return replace(decision, status=status, events=tuple(transition_events(previous, status)))
