"""What a FineTuneJob reports: its phase, conditions, progress, metrics and results.

The operator writes this into the object's status subresource; the local runner writes the same shape
to `status.json`. Condition types and reasons are named constants here, never string literals in the
code that sets them, so that users can write automation against a fixed vocabulary.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from kubetune.api.base import ApiModel, doc

Phase = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]
PHASES: tuple[Phase, ...] = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended")
FINISHED_PHASES: frozenset[Phase] = frozenset({"Succeeded", "Failed"})


class ConditionType:
    """The condition types a FineTuneJob carries."""

    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    EARLY_STOPPED = "EarlyStopped"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    OVERFITTING_SUSPECTED = "OverfittingSuspected"
    UNDERFITTING_SUSPECTED = "UnderfittingSuspected"
    PROGRESS_UNAVAILABLE = "ProgressUnavailable"
    """True while the operator cannot reach rank 0's progress endpoint (pod port 9400)."""
    RESULT_INCOMPLETE = "ResultIncomplete"
    """True when the status holds a shortened trainer result; its message says where the whole one is."""
    ADMITTED = "Admitted"
    """Kueue (spec.scheduling.queueName): True once the job's Workload is admitted; False with reason Queued
    while it waits for quota (the message names the LocalQueue and gives Kueue's reason), or Evicted."""
    STORAGE_WARNING = "StorageWarning"
    """True when the last launch found claims that may not hold the gang (kubetune.policies.storage)."""
    NODE_OUTAGE = "NodeOutage"
    """True while a mass node outage holds the job (kubetune.policies.mass_node_loss): its workers' nodes
    stopped reporting together with most of the cluster's, so none is declared lost or force-deleted."""
    CHECKPOINTS_ADOPTED = "CheckpointsAdopted"
    """True once the job resumed checkpoints an earlier job left in its folder (the same manifest applied
    again after a delete): its message names that job (kubetune.policies.folder_owner)."""


class Reason:
    """Machine-readable reasons on conditions and events."""

    GANG_CREATED = "GangCreated"
    WORKERS_RUNNING = "WorkersRunning"
    WORKERS_PENDING = "WorkersPending"
    """Running is False while a relaunched gang's workers start (after a restart or a resumption)."""
    TRAINING_COMPLETED = "TrainingCompleted"
    EARLY_STOPPED = "EarlyStopped"
    WORKER_FAILED = "WorkerFailed"
    OUT_OF_MEMORY = "OutOfMemory"
    DISRUPTED = "Disrupted"
    RESTARTS_EXHAUSTED = "MaxRestartsExceeded"
    INVALID_SPEC = "InvalidSpec"
    DATA_ERROR = "DataError"
    MODEL_ERROR = "ModelError"
    NON_FINITE_LOSS = "NonFiniteLoss"
    PEER_LOST = "PeerLost"
    CHECKPOINT_UNREADABLE = "CheckpointUnreadable"
    """Restarting: reading a checkpoint on resume failed with an error that proves no damage (an I/O error);
    the next attempt reads the same checkpoint again instead of falling back to an older one."""
    SUPERSEDED = "Superseded"
    """Failed: a newer attempt or another job claimed the checkpoint folder (kubetune.trainer.fencing); the
    worker stopped without writing more."""
    HUNG = "Hung"
    """Restarting: the gang stopped moving past `retryPolicy.hangTimeoutSeconds` (a rank stopped reporting, or
    every rank waited for ever); the message names the ranks and the step (kubetune.policies.hang)."""
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    UNSCHEDULABLE = "Unschedulable"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    CONTAINER_CREATING_TIMEOUT = "ContainerCreatingTimeout"
    """Failed: a scheduled worker stayed in ContainerCreating (volumes not attached or mounted, e.g. a
    Multi-Attach of a ReadWriteOnce claim, or a slow image pull) past `retryPolicy.startupTimeoutSeconds`."""
    CLAIM_NOT_SHAREABLE = "ClaimNotShareable"
    """Failed before launch: a ReadWriteOncePod claim would be mounted by more than one worker pod."""
    CLAIM_SINGLE_NODE = "ClaimSingleNode"
    """Warning Event at launch: a ReadWriteOnce claim with workers that may land on different nodes."""
    CLAIM_READ_ONLY = "ClaimReadOnly"
    """Warning Event at launch: checkpoints or output go to a claim that only offers ReadOnlyMany."""
    CLAIM_NOT_FOUND = "ClaimNotFound"
    """Warning Event at launch: a claim the job names does not exist (yet); its pods wait unschedulable."""
    CLAIMS_USABLE = "ClaimsUsable"
    """StorageWarning turned False: a later launch found nothing to warn about."""
    SUSPENDED = "JobSuspended"
    RESUMED = "JobResumed"
    SPEC_CHANGE_REFUSED = "SpecChangeRefused"
    QUOTA_EXCEEDED = "QuotaExceeded"
    """Created=False, phase Pending: the gang does not fit a ResourceQuota of the namespace; retried when a
    quota changes."""
    CREATE_FORBIDDEN = "CreateForbidden"
    """Created=False, phase Pending: the API server refused the operator itself (RBAC); retried."""
    POD_REJECTED = "PodRejected"
    """Failed: the API server or an admission plugin refused the worker pod the spec produced."""
    NAME_TAKEN = "NameTaken"
    """Failed: an object one of the job's children would be named as (its Service or ConfigMap, an attempt's
    pod or NetworkPolicy) exists and no FineTuneJob controls it; the operator never deletes it."""
    STALE_CHILDREN = "WaitingForStaleObjects"
    """Event: a deleted job of the same name still has children; they are removed before this job starts."""
    QUEUED = "Queued"
    """Admitted=False: the job's Kueue Workload waits in its LocalQueue; no pod exists (phase Pending, or
    Suspended after an eviction while it waits for re-admission)."""
    QUEUE_UNAVAILABLE = "QueueUnavailable"
    """Admitted=False, phase Pending (Suspended once it had run): the job names a queue but the operator
    cannot queue it (its Kueue integration off or Kueue not installed); no pod exists, it never runs unqueued."""
    RESUMED_FROM_EARLIER_JOB = "ResumedFromEarlierJob"
    """CheckpointsAdopted True + Normal Event: the job continues the checkpoints of an earlier job with the
    same fingerprint (kubetune.api.fingerprint) and another uid, named in the message."""
    FOLDER_IN_USE = "FolderInUse"
    """Failed before the first launch: another live job of the namespace writes a folder that overlaps
    this job's `storage.checkpoints` or `storage.output` (kubetune.policies.shared_folders)."""
    PROTECTED_NAMESPACE = "ProtectedNamespace"
    """Failed: the job is in a namespace where the operator runs no job (kube-system, kube-public,
    kube-node-lease, the operator's own), whatever its RBAC allows."""
    WORKLOAD_ADMITTED = "WorkloadAdmitted"
    """Admitted=True: Kueue admitted the Workload; the gang runs on the admitted flavor's nodes."""
    EVICTED = "Evicted"
    """Admitted=False, phase Suspended: Kueue evicted the Workload (preemption, an admission check withdrawn);
    the gang was removed with its checkpoints kept and resumes from them once re-admitted."""
    NODE_LOST = "NodeLost"
    """Restarting (not counted): a worker's node stopped reporting; its pods were force-deleted."""
    PREEMPTED = "Preempted"
    """Restarting (not counted): the scheduler preempted a worker for a higher-priority pod (DisruptionTarget
    PreemptionByScheduler). While the relaunch waits for that capacity: Running False, a Warning Event, and
    no `retryPolicy.schedulingTimeoutSeconds` (kubetune.policies.deadlines)."""
    VOLUME_STILL_ATTACHED = "VolumeStillAttached"
    """Running False + Warning Event while a worker waits for a volume still attached to another node
    (Multi-Attach), past `retryPolicy.startupTimeoutSeconds` up to a bound beyond Kubernetes' force-detach;
    Failed past that bound (kubetune.policies.deadlines)."""
    MASS_NODE_LOSS = "MassNodeLoss"
    """NodeOutage True + Warning Event: the job's nodes went silent with most of the cluster's (the control
    plane lost the kubelets, not the kubelets their machines): no worker is declared lost, none force-deleted."""
    NODE_OUTAGE_OVER = "NodeOutageOver"
    """NodeOutage False + Event: the job's nodes report again, or the outage became local (normal handling,
    with retryPolicy.nodeLostGraceSeconds counted from then)."""
    UNKNOWN_FIELDS = "UnknownFieldsIgnored"
    """Warning Event: the job has fields of a newer CRD than the operator knows; they are ignored."""
    OVERFITTING = "EvalLossRising"
    UNDERFITTING = "LossPlateauHigh"
    DIVERGED = "TrainingDiverged"
    """On UnderfittingSuspected: the training loss rose far above where it started (or stopped being a
    number): the learning rate is too high, which no amount of extra training fixes."""
    HEALTHY_FIT = "FitLooksHealthy"
    PROGRESS_UNREACHABLE = "ProgressUnreachable"
    """On ProgressUnavailable: rank 0's `GET /progress` refused or timed out for longer than the operator's
    `progress_unreachable_after`; the message names the fix (allow operator -> trainer pods on TCP 9400)."""
    RANK_ZERO_REFUSED = "RankZeroAnswerRefused"
    """On ProgressUnavailable: rank 0 answered, but not as kubetune's trainer does (a body over the operator's
    cap, a 200 that is not a snapshot or result, HTTP that makes no sense); the answer was refused unread."""
    PROGRESS_READABLE = "ProgressReadable"
    """On ProgressUnavailable, False: the operator reads rank 0's progress again."""
    RESULT_NOT_HANDED_OVER = "ResultNotHandedOver"
    """On ResultIncomplete: the whole result did not reach the operator and the termination message was too
    small for it; the message gives the path of the whole result.json."""


class Condition(ApiModel):
    """One observed aspect of the job, in Kubernetes' usual condition shape."""

    type: str = doc("type of the condition (Created, Running, Restarting, EarlyStopped, Succeeded, ...).")
    status: Literal["True", "False", "Unknown"] = doc("status of the condition: True, False or Unknown.")
    reason: str = doc("reason: a CamelCase machine-readable cause.", default="")
    message: str = doc("message: a human-readable explanation.", default="")
    last_transition_time: datetime | None = doc(
        "lastTransitionTime: when the status last changed (RFC 3339).", default=None
    )


class Progress(ApiModel):
    """How far training has come, from rank 0 of the current attempt."""

    step: int = doc("step: optimizer steps completed.", default=0, ge=0)
    total_steps: int = doc("totalSteps: optimizer steps planned.", default=0, ge=0)
    epoch: float = doc("epoch: fractional epochs completed.", default=0.0, ge=0)
    percent: int = doc("percent: step / totalSteps in whole percent (0-100).", default=0, ge=0, le=100)
    eta_seconds: int | None = doc("etaSeconds: estimated time to finish, in seconds.", default=None, ge=0)


class PreferenceFigures(ApiModel):
    """DPO's figures over a set of pairs (means per pair)."""

    reward_accuracy: float | None = doc(
        "rewardAccuracy: fraction (0-1) of pairs whose chosen reward beats the rejected one's.", default=None
    )
    reward_margin: float | None = doc("rewardMargin: mean chosen minus rejected reward, in nats x beta.", default=None)
    chosen_reward: float | None = doc("chosenReward: mean reward of the chosen answers, in nats x beta.", default=None)
    rejected_reward: float | None = doc(
        "rejectedReward: mean reward of the rejected answers, in nats x beta.", default=None
    )


class Metrics(ApiModel):
    """The latest training and validation figures."""

    train_loss: float | None = doc("trainLoss: mean training loss over the last logging window.", default=None)
    eval_loss: float | None = doc("evalLoss: loss on the validation set at the last evaluation.", default=None)
    best_eval_loss: float | None = doc("bestEvalLoss: lowest validation loss so far.", default=None)
    best_step: int | None = doc("bestStep: optimizer step of the best evaluation.", default=None, ge=0)
    tokens_per_second: float | None = doc(
        "tokensPerSecond: non-padding training tokens per second over the whole gang.", default=None, ge=0
    )
    learning_rate: float | None = doc("learningRate: the current learning rate.", default=None, ge=0)
    train_rewards: PreferenceFigures | None = doc(
        "trainRewards: DPO reward figures of the last training step (DPO jobs).", default=None
    )
    eval_rewards: PreferenceFigures | None = doc(
        "evalRewards: DPO reward figures at the last evaluation on the validation pairs (DPO jobs).", default=None
    )


class EvaluationResult(ApiModel):
    """Validation figures of one model (base or fine-tuned)."""

    eval_loss: float | None = doc("evalLoss: mean token cross-entropy on the validation set.", default=None)
    perplexity: float | None = doc("perplexity: exp(evalLoss).", default=None)
    token_accuracy: float | None = doc(
        "tokenAccuracy: fraction (0-1) of learned tokens predicted exactly.", default=None, ge=0, le=1
    )
    exact_match: float | None = doc(
        "exactMatch: fraction (0-1) of validation examples answered exactly.", default=None, ge=0, le=1
    )
    examples: int | None = doc("examples: validation examples evaluated.", default=None, ge=0)
    latency_seconds: float | None = doc(
        "latencySeconds: mean time to generate one answer, in seconds, on the machine that ran it.", default=None, ge=0
    )
    tokens_per_second: float | None = doc(
        "tokensPerSecond: generated tokens per second while answering.", default=None, ge=0
    )
    parameters: int | None = doc("parameters: the model's parameter count.", default=None, ge=0)
    preference_accuracy: float | None = doc(
        "preferenceAccuracy: fraction (0-1) of preference pairs whose chosen answer the model gives the higher "
        "log-probability (DPO jobs).",
        default=None,
        ge=0,
        le=1,
    )
    reward_accuracy: float | None = doc(
        "rewardAccuracy: fraction (0-1) of pairs whose chosen answer's DPO reward beats the rejected one's.",
        default=None,
        ge=0,
        le=1,
    )
    reward_margin: float | None = doc(
        "rewardMargin: mean of chosen minus rejected DPO reward, in nats x beta (DPO jobs).", default=None
    )
    chosen_reward: float | None = doc(
        "chosenReward: mean DPO reward of the chosen answers: beta x log-ratio to the reference, in nats.", default=None
    )
    rejected_reward: float | None = doc(
        "rejectedReward: mean DPO reward of the rejected answers: beta x log-ratio to the reference, in nats.",
        default=None,
    )


class ApproachResult(EvaluationResult):
    """One row of the was-it-worth-it table: a model and a way of using it."""

    name: str = doc("name of the row, e.g. `base 4-shot` or `fine-tuned`.")
    approach: Literal["zero-shot", "few-shot", "fine-tuned"] = doc("approach: zero-shot, few-shot or fine-tuned.")
    model: str = doc("model: `base`, `reference` or `fine-tuned`.")


class EvaluationSummary(ApiModel):
    """Base model against fine-tuned model on the same held-out set: the test set when the job has one,
    else the validation set."""

    base_model: EvaluationResult | None = doc("baseModel: the untouched pre-trained model.", default=None)
    fine_tuned: EvaluationResult | None = doc("fineTuned: the exported fine-tuned model.", default=None)
    approaches: list[ApproachResult] | None = doc(
        "approaches: every evaluated approach (prompting baselines and the fine-tuned model), on the same held-out set (`scoredOn`).",
        default=None,
    )
    verdict: str | None = doc(
        "verdict: one sentence saying whether fine-tuning paid off: the fine-tuned model against the best "
        "prompting approach, with their sizes and latencies, and the set it was scored on.",
        default=None,
    )
    scored_on: Literal["test", "validation"] | None = doc(
        "scoredOn: the set every figure here was scored on: `test` (dataset.test or testSplit: no training "
        "decision saw it) or `validation` (which also chose the checkpoint, so the fine-tuned figures are "
        "optimistic).",
        default=None,
    )


class CheckpointStatus(ApiModel):
    """Checkpoints on storage."""

    latest: str | None = doc("latest: path of the newest complete checkpoint.", default=None)
    latest_step: int | None = doc("latestStep: optimizer step of the newest checkpoint.", default=None, ge=0)
    best: str | None = doc("best: path of the checkpoint with the best validation metric.", default=None)


class OutputStatus(ApiModel):
    """The exported model."""

    path: str | None = doc("path where the fine-tuned model was exported.", default=None)


class FineTuneJobStatus(ApiModel):
    """The observed state of a FineTuneJob."""

    phase: Phase = doc("phase: Pending, Running, Restarting, Succeeded, Failed or Suspended.", default="Pending")
    conditions: list[Condition] = doc("conditions: the latest observations of the job's state.", default=[])
    restarts: int = doc("restarts: gang restarts counted against `retryPolicy.maxRestarts`.", default=0, ge=0)
    attempt: int = doc(
        "attempt: the current gang attempt (1-based); it grows on every restart, disruptions included.",
        default=0,
        ge=0,
    )
    start_time: datetime | None = doc("startTime: when the first gang was created (RFC 3339).", default=None)
    completion_time: datetime | None = doc(
        "completionTime: when the job reached Succeeded or Failed (RFC 3339).", default=None
    )
    observed_generation: int | None = doc(
        "observedGeneration: the metadata.generation this status reflects.", default=None, ge=0
    )
    progress: Progress | None = doc("progress of training.", default=None)
    metrics: Metrics | None = doc("metrics: latest training and validation figures.", default=None)
    evaluation: EvaluationSummary | None = doc(
        "evaluation: base vs fine-tuned model on the test set (the validation set when there is none).", default=None
    )
    checkpoints: CheckpointStatus | None = doc("checkpoints on storage.", default=None)
    output: OutputStatus | None = doc("output: the exported model.", default=None)
    message: str | None = doc("message: a one-line human-readable summary of the state.", default=None)
