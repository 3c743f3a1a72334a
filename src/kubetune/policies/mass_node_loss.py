"""A brake on mass node loss: when most nodes go silent at once, the control plane lost them, not they their work.

A node counts as lost when its Ready condition is not True, and node_loss.py force-deletes a silent
node's workers after `retryPolicy.nodeLostGraceSeconds`. That is right for one dead machine and wrong
when the kubelets lose the API server while the operator does not (a control-plane or network outage):
every node goes Unknown at once while every trainer process still runs, and force-deleting them all
throws away every gang in the cluster for replacements that cannot even be scheduled. Kubernetes' node
lifecycle controller stops evicting in exactly this case, and this module follows its arithmetic
(`ComputeZoneState` in pkg/controller/nodelifecycle):

- a set of nodes is *fully disrupted* when none of them is Ready, *partially disrupted* when more than
  two are not Ready and they are at least `unhealthy_share` of it (`--unhealthy-zone-threshold`, 0.55),
  else normal;
- the brake is on when both the nodes that run kubetune's trainer pods and all the cluster's nodes are
  disrupted (partially or fully). Both, because an outage confined to a few nodes of a large cluster (a
  GPU pool losing power) is the nodes' own and is handled as before; and the trainers' nodes, because an
  outage elsewhere is no reason to keep a job's really dead node waiting.

Below `--large-cluster-size-threshold` (50 nodes) the controller stops evicting in a partial disruption
and above it evicts one node per 100 s. kubetune brakes in both: it has no per-node rate to slow down to,
since one force-deletion ends a whole gang's attempt, and a wait costs nothing while the processes run.
Below three not-Ready nodes only a full disruption brakes (the controller's "more than two"): in a
two-node cluster one silent node is handled as lost, both silent are an outage.

While braked, a job with a worker on a silent node is held: its silent workers are not declared lost,
none is force-deleted (their grace clock is held at zero), a failure of a peer is attributed to the node
loss (not counted, as within the grace), and the job says so (NodeOutage True, reason MassNodeLoss, a
Warning Event). When its nodes report again the hold ends and training goes on, no restart counted; when
the outage shrinks below the thresholds while a node stays silent, that node's grace starts again from
the moment the brake lifted (as the controller resets its nodes' probe times when leaving full
disruption), so a cluster recovering node by node does not lose every gang the instant the brake lifts.
The hold's start and end are read from the NodeOutage condition, so the decision stays level-triggered.

`decide_with_outage` is `reconcile.decide` for a supervisor that sees the cluster's nodes (the operator,
whose Node cache gives `assess` its input); the local runner, which has no nodes, calls `decide` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any

from kubetune.api.job import FineTuneJob
from kubetune.api.status import FINISHED_PHASES, ConditionType, FineTuneJobStatus, Reason
from kubetune.policies import reconcile
from kubetune.policies.observed import WorkerObservation
from kubetune.policies.status import find_condition, set_condition, transition_events, with_phase

#: The node lifecycle controller's `--unhealthy-zone-threshold`: the share of not-Ready nodes from which a
#: set of nodes is partially disrupted.
UNHEALTHY_SHARE = 0.55
#: Fewest not-Ready nodes that make a partial disruption (the controller's `notReadyNodes > 2`): one or two
#: silent nodes are machines failing, whatever share of a small cluster they are.
MIN_PARTIAL_NOT_READY = 3


class Disruption(Enum):
    """How disrupted a set of nodes is (the controller's zone states)."""

    NORMAL = "normal"
    PARTIAL = "partial"
    FULL = "full"


@dataclass(frozen=True)
class Readiness:
    """How many nodes of a set are Ready and how many are not (NotReady, Unknown, or no Ready condition)."""

    ready: int
    not_ready: int

    @property
    def total(self) -> int:
        return self.ready + self.not_ready

    def disruption(self, share: float) -> Disruption:
        """The controller's `ComputeZoneState` for this set."""
        if self.ready == 0 and self.not_ready > 0:
            return Disruption.FULL
        if self.not_ready >= MIN_PARTIAL_NOT_READY and self.not_ready / self.total >= share:
            return Disruption.PARTIAL
        return Disruption.NORMAL

    def describe(self) -> str:
        return f"{self.not_ready} of {self.total}"


@dataclass(frozen=True)
class Thresholds:
    """When an outage is a mass outage (the supervisor's settings)."""

    unhealthy_share: float | None = UNHEALTHY_SHARE
    """Share of not-Ready nodes (0-1), among the trainers' nodes and among all nodes, from which the brake
    is on (with at least MIN_PARTIAL_NOT_READY of them, or all). The default is the node lifecycle
    controller's `--unhealthy-zone-threshold`, so kubetune stops where Kubernetes stops evicting. None: no
    brake (every silent node is handled as lost after the grace, as before the brake existed)."""


@dataclass(frozen=True)
class ClusterNodes:
    """The cluster's nodes as the supervisor sees them (its Node cache)."""

    all: Readiness
    """Every Node."""
    trainers: Readiness
    """The Nodes that run at least one of kubetune's trainer pods not yet terminated (of any job)."""


@dataclass(frozen=True)
class Outage:
    """What the nodes say, for every job: a mass outage (brake) or not."""

    mass: bool
    summary: str
    """e.g. "2 of 2 nodes running trainers and 2 of 3 nodes are not Ready"."""


def assess(nodes: ClusterNodes, thresholds: Thresholds) -> Outage:
    """Whether the cluster is in a mass outage: the trainers' nodes and all nodes both disrupted."""
    summary = f"{nodes.trainers.describe()} nodes running trainers and {nodes.all.describe()} nodes are not Ready"
    share = thresholds.unhealthy_share
    if share is None:
        return Outage(False, summary)
    disrupted = (
        nodes.trainers.disruption(share) is not Disruption.NORMAL
        and nodes.all.disruption(share) is not Disruption.NORMAL
    )
    return Outage(disrupted, summary)


@dataclass(frozen=True)
class Hold:
    """One job's view of the outage: the workers as the other policies must see them, and whether it is held."""

    workers: tuple[WorkerObservation, ...]
    braked: bool
    silent: tuple[WorkerObservation, ...]
    """The workers, not terminated, whose node is not Ready (as observed)."""


def _silent(workers: Sequence[WorkerObservation]) -> tuple[WorkerObservation, ...]:
    return tuple(w for w in workers if w.node_lost_since is not None and not w.terminated)


def _lifted_at(status: FineTuneJobStatus, now: datetime) -> datetime | None:
    """When the job's last hold ended: now if it is on in `status` (it ends with this decision), else the
    time NodeOutage turned False; None if the job was never held."""
    condition = find_condition(status, ConditionType.NODE_OUTAGE)
    if condition is None:
        return None
    return now if condition.status == "True" else condition.last_transition_time


def hold(status: FineTuneJobStatus, workers: Sequence[WorkerObservation], outage: Outage | None, now: datetime) -> Hold:
    """The workers with their nodes' silence as the node-loss policy must count it. While held (a mass
    outage and a worker of the job on a silent node), a silent node has been silent for no time at all, so
    no grace passes; after a hold, silence counts from the moment the hold ended, at the earliest. `outage`
    None: nothing is known of the cluster's nodes (the local runner, an operator that may not list Nodes),
    so no brake."""
    silent = _silent(workers)
    braked = outage is not None and outage.mass and bool(silent)
    since = now if braked else _lifted_at(status, now)
    if since is None or not silent:
        return Hold(tuple(workers), braked, silent)
    seen = tuple(
        replace(w, node_lost_since=max(w.node_lost_since, since)) if w in silent and w.node_lost_since else w
        for w in workers
    )
    return Hold(seen, braked, silent)


def _held_message(silent: Sequence[WorkerObservation], outage: Outage) -> str:
    nodes = ", ".join(sorted({w.node or "?" for w in silent}))
    indexes = ", ".join(str(w.index) for w in sorted(silent, key=lambda w: (w.attempt, w.index)))
    return (
        f"mass node outage: node(s) {nodes} of worker(s) {indexes} stopped reporting, and {outage.summary}. "
        f"The control plane or the network lost the kubelets, more likely than the machines: no worker is "
        f"declared lost or force-deleted until the nodes report again or the outage becomes local (fewer nodes "
        f"not Ready); retryPolicy.nodeLostGraceSeconds then counts from that moment"
    )


def _lift_message(silent: Sequence[WorkerObservation], outage: Outage | None) -> str:
    if not silent:
        return "the nodes of every worker report again; the gang went on training (no restart counted)"
    nodes = ", ".join(sorted({w.node or "?" for w in silent}))
    where = f" ({outage.summary})" if outage is not None else ""
    return (
        f"the node outage is local now{where}: node(s) {nodes} still silent, handled as lost once "
        f"retryPolicy.nodeLostGraceSeconds has passed from now"
    )


def with_outage_condition(
    status: FineTuneJobStatus, held: Hold, outage: Outage | None, now: datetime
) -> FineTuneJobStatus:
    """`status` (the decision's) saying whether the job is held: NodeOutage True with reason MassNodeLoss
    (and the message of a Running job), or False with NodeOutageOver once it ends (the Events follow from the
    condition's transitions). A job never held gets no condition."""
    condition = find_condition(status, ConditionType.NODE_OUTAGE)
    if held.braked and outage is not None and status.phase not in FINISHED_PHASES:
        message = _held_message(held.silent, outage)
        status = set_condition(status, ConditionType.NODE_OUTAGE, "True", Reason.MASS_NODE_LOSS, message, now)
        return with_phase(status, status.phase, message) if status.phase == "Running" else status
    if condition is None or condition.status != "True":
        return status  # never held, or its end was said already (that message stays as it was written)
    message = _lift_message(held.silent, outage)
    if status.phase == "Running" and status.message == condition.message:  # the hold's headline, not the step's
        status = with_phase(status, status.phase, message)
    return set_condition(status, ConditionType.NODE_OUTAGE, "False", Reason.NODE_OUTAGE_OVER, message, now)


def decide_with_outage(
    job: FineTuneJob, workers: Sequence[WorkerObservation], now: datetime, outage: Outage | None, **options: Any
) -> reconcile.Decision:
    """`reconcile.decide` (with `options`: progress, queue) for a supervisor that sees the cluster's nodes:
    the job's workers as the hold has them, and its status and Events saying whether it is held."""
    held = hold(job.status or FineTuneJobStatus(), workers, outage, now)
    decision = reconcile.decide(job, held.workers, now, **options)
    status = with_outage_condition(decision.status, held, outage, now)
    events = tuple(transition_events(decision.status, status))
    return replace(decision, status=status, events=decision.events + events)
