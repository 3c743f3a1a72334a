"""What a pod says about its worker, as a `WorkerObservation` the shared policies understand.

This is the only place that knows where Kubernetes keeps each fact: exit codes and the termination
message in the container state, OOMKilled as its reason, disruptions as the DisruptionTarget
condition (preemption, eviction, node drain, node loss; the scheduler's preemption by its reason),
unschedulability as PodScheduled=False with reason Unschedulable, and a pod being removed as a
deletionTimestamp. A volume still attached to another node is in none of the pod's fields: the
attach-detach controller says it only in an Event of the pod (FailedAttachVolume, "Multi-Attach error"),
so the operator reads a pod's Events only where `looks_up_attach` says so. Pure: dicts in, an observation
out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from kubetune.operator.builders import ATTEMPT_LABEL, CONTAINER, INDEX_LABEL, JOB_LABEL
from kubetune.policies import deadlines
from kubetune.policies.observed import WorkerObservation, WorkerState, parse_termination_message

#: Longest raw termination message kept when it is not a TrainerResult (the status stays readable).
MAX_RAW_MESSAGE = 300
#: The DisruptionTarget reason the scheduler sets on a pod it preempts for a higher-priority one.
PREEMPTION_REASON = "PreemptionByScheduler"
#: The Event reason of the attach-detach controller when it cannot attach a pod's volume, and the words of
#: its refusal because the volume is attached to another node (kube-controller-manager, since Kubernetes
#: 1.10: "Multi-Attach error for volume ... Volume is already exclusively attached to one node ..." or
#: "... already used by pod(s) ...").
ATTACH_FAILED_REASON = "FailedAttachVolume"
MULTI_ATTACH_WORDS = "Multi-Attach error"


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (None when absent or unreadable)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def owned_by(pod: Mapping[str, Any], job_name: str, job_uid: str | None = None) -> bool:
    """Whether a pod is a worker of this job. The listing selects by the job-name label only; a worker
    also carries the worker-index and attempt labels (`observe_pod` reads both), so a pod that merely
    copies the job-name label, made by hand or by another tool, is not taken for one. With `job_uid`, the
    pod must also be owned by that very object: a deleted job's workers (being removed by the garbage
    collector) are never taken for those of a new job of the same name."""
    metadata = pod.get("metadata", {})
    labels = metadata.get("labels") or {}
    if job_uid is not None and job_uid not in {ref.get("uid") for ref in metadata.get("ownerReferences") or []}:
        return False
    return labels.get(JOB_LABEL) == job_name and INDEX_LABEL in labels and ATTEMPT_LABEL in labels


def _condition(pod: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    conditions: Iterable[Mapping[str, Any]] = pod.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)


def _container_state(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses: Iterable[Mapping[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == CONTAINER), None)
    return (status or {}).get("state") or {}


def _state(pod: Mapping[str, Any], container: Mapping[str, Any]) -> WorkerState:
    if "terminated" in container:
        return "succeeded" if container["terminated"].get("exitCode") == 0 else "failed"
    if "running" in container:
        return "running"
    phase = pod.get("status", {}).get("phase")
    if phase == "Succeeded":
        return "succeeded"
    if phase == "Failed":  # e.g. evicted before its container ran
        return "failed"
    return "running" if phase in ("Running", "Unknown") else "pending"


def node_of(pod: Mapping[str, Any]) -> str | None:
    node: str | None = (pod.get("spec") or {}).get("nodeName")
    return node


def suspects_node_loss(pod: Mapping[str, Any]) -> bool:
    """Whether the pod shows what a lost node leaves behind, so that its Node is worth reading: the
    node-lifecycle controller has set Ready=False on a pod whose container was last seen running, or the
    pod is being deleted and no end was ever reported. (Reading every worker's Node on every reconcile
    would cost a request per worker; this costs one only when something is off.)"""
    if node_of(pod) is None or "terminated" in _container_state(pod):
        return False
    ready = _condition(pod, "Ready")
    not_ready = ready is not None and ready.get("status") != "True" and "running" in _container_state(pod)
    return not_ready or bool(pod.get("metadata", {}).get("deletionTimestamp"))


def node_lost_since(node: Mapping[str, Any] | None) -> datetime | None:
    """Since when a Node has not been Ready (its kubelet stopped reporting: Unknown; or reports NotReady);
    None while it is Ready, or when the Node is gone (the pod garbage collector removes pods of deleted
    Nodes itself)."""
    if node is None:
        return None
    ready = _condition(node, "Ready")
    if ready is None or ready.get("status") == "True":
        return None
    return parse_time(ready.get("lastTransitionTime"))


def _waiting_since(pod: Mapping[str, Any], unschedulable: bool) -> datetime | None:
    """Since when a pending pod waits to start: since it was scheduled, else since it was created."""
    scheduled = _condition(pod, "PodScheduled") or {}
    since = parse_time(scheduled.get("lastTransitionTime")) if not unschedulable else None
    return since or parse_time(pod.get("metadata", {}).get("creationTimestamp"))


def looks_up_attach(pod: Mapping[str, Any], now: datetime) -> bool:
    """Whether the pod's Events are worth reading for a Multi-Attach: it is ContainerCreating for long enough
    (kubetune.policies.deadlines.attach_worth_looking_up). One read per such pod and reconcile: none for a pod
    that starts in time, so a healthy cluster costs no request."""
    if node_of(pod) is None:
        return False
    waiting: Mapping[str, Any] = _container_state(pod).get("waiting") or {}
    since = _waiting_since(pod, unschedulable=False)
    waited = (now - since).total_seconds() if since is not None else 0.0
    return deadlines.attach_worth_looking_up(waiting.get("reason"), waited)


def multi_attach_message(events: Sequence[Mapping[str, Any]]) -> str | None:
    """The newest Multi-Attach refusal among a pod's Events (the attach-detach controller's words); None
    when there is none."""
    refusals = [
        e for e in events if e.get("reason") == ATTACH_FAILED_REASON and MULTI_ATTACH_WORDS in (e.get("message") or "")
    ]
    if not refusals:
        return None
    newest = max(refusals, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return truncate(str(newest.get("message")))


def observe_pod(
    pod: Mapping[str, Any], node: Mapping[str, Any] | None = None, events: Sequence[Mapping[str, Any]] = ()
) -> WorkerObservation:
    """The observation of one worker pod (it must carry the worker-index and attempt labels); `node` is its
    Node when it was read (see `suspects_node_loss`), `events` its Events when they were read (see
    `looks_up_attach`)."""
    metadata = pod.get("metadata", {})
    labels = metadata.get("labels") or {}
    container = _container_state(pod)
    terminated: Mapping[str, Any] = container.get("terminated") or {}
    waiting: Mapping[str, Any] = container.get("waiting") or {}
    raw_message = terminated.get("message")
    result = parse_termination_message(raw_message)
    disruption = _condition(pod, "DisruptionTarget")
    scheduled = _condition(pod, "PodScheduled")
    unschedulable = (
        scheduled is not None and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
    )
    state = _state(pod, container)
    exit_code = terminated.get("exitCode")
    signal = terminated.get("signal")
    pod_message = pod.get("status", {}).get("message")
    return WorkerObservation(
        index=int(labels[INDEX_LABEL]),
        attempt=int(labels[ATTEMPT_LABEL]),
        state=state,
        exit_code=int(exit_code) if exit_code is not None else None,
        signal=int(signal) if signal else None,
        result=result,
        message=truncate(raw_message or pod_message or None) if result is None else None,
        oom_killed=terminated.get("reason") == "OOMKilled",
        disrupted=disruption is not None and disruption.get("status") == "True",
        disruption_message=(disruption or {}).get("message") or (disruption or {}).get("reason"),
        preempted=(disruption or {}).get("reason") == PREEMPTION_REASON,
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        waiting_since=_waiting_since(pod, unschedulable),
        unschedulable_since=parse_time((scheduled or {}).get("lastTransitionTime")) if unschedulable else None,
        unschedulable_message=(scheduled or {}).get("message") if unschedulable else None,
        volume_held_elsewhere=multi_attach_message(events) if waiting else None,
        deleting=bool(metadata.get("deletionTimestamp")),
        finished_at=parse_time(terminated.get("finishedAt")),
        node=node_of(pod),
        node_lost_since=node_lost_since(node),
    )


def truncate(message: str | None) -> str | None:
    if message is None or len(message) <= MAX_RAW_MESSAGE:
        return message
    return message[: MAX_RAW_MESSAGE - 3] + "..."
