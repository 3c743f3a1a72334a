"""The FineTuneJob resource: spec, status and the rules that span them.

Everything the product does starts from `FineTuneJob.model_validate(manifest)`: the CLI validates with
it, the trainer is configured from it, the operator types the objects it watches with it and writes
`FineTuneJobStatus` back. The CRD is generated from these classes (see `kubetune.api.crd`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from kubetune.api.base import MAX_STRING_LENGTH, ApiModel, Rule, doc
from kubetune.api.operations import (
    PREFERENCE_METRICS,
    CheckpointingSpec,
    EarlyStoppingSpec,
    EvaluationSpec,
    ResourcesSpec,
    RetryPolicySpec,
    SchedulingSpec,
    StorageSpec,
)
from kubetune.api.paths import OVERLAP_RULES
from kubetune.api.status import FineTuneJobStatus
from kubetune.api.training import DatasetSpec, DistributedSpec, HyperparametersSpec, MethodSpec, ModelSpec

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("kubetune",)

#: Longest job name. Every derived name must stay a DNS-1035 label of at most 63 characters: the
#: headless Service is `<name>`, pods are `<name>-a<attempt>-w<index>` with hostnames `<name>-w<index>`,
#: the ConfigMap `<name>-config`. 40 leaves 23 characters for suffixes (attempts and indexes up to
#: 9 digits each).
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class FineTuneJobSpec(ApiModel):
    """The desired fine-tuning run."""

    model: ModelSpec = doc("model: the pre-trained model to start from.")
    dataset: DatasetSpec = doc("dataset: training and validation data.")
    method: MethodSpec = doc("method: full fine-tuning or LoRA. Default full.", default_factory=MethodSpec)
    hyperparameters: HyperparametersSpec = doc(
        "hyperparameters: optimisation settings.", default_factory=HyperparametersSpec
    )
    distributed: DistributedSpec = doc(
        "distributed: pods, processes, ZeRO stage and precision.", default_factory=DistributedSpec
    )
    evaluation: EvaluationSpec | None = doc(
        "evaluation: periodic validation. Unset: evaluate only once, at the end.", default=None
    )
    early_stopping: EarlyStoppingSpec | None = doc(
        "earlyStopping: stop when validation stops improving (needs `evaluation`). Unset: train to the end.",
        default=None,
    )
    checkpointing: CheckpointingSpec = doc(
        "checkpointing: checkpoint interval and retention.", default_factory=CheckpointingSpec
    )
    retry_policy: RetryPolicySpec = doc(
        "retryPolicy: whole-gang restarts and startup deadlines.", default_factory=RetryPolicySpec
    )
    storage: StorageSpec = doc("storage: PVC locations of checkpoints and output.", default_factory=StorageSpec)
    resources: ResourcesSpec | None = doc(
        "resources: requests and limits of each worker pod (Kubernetes ResourceRequirements).", default=None
    )
    image: str | None = doc(
        "image: the trainer container image. Unset: the operator's configured default.",
        default=None,
        min_length=1,
        max_length=MAX_STRING_LENGTH,
    )
    scheduling: SchedulingSpec | None = doc("scheduling: node selection, tolerations, priority, queue.", default=None)
    suspend: bool = doc(
        "suspend: true removes the workers and keeps checkpoints; false resumes from the last checkpoint. "
        "Default false.",
        default=False,
    )
    active_deadline_seconds: int | None = doc(
        "activeDeadlineSeconds: longest the job may run from its start, in seconds, restarts included; "
        "then it fails with DeadlineExceeded. Unset: no limit.",
        default=None,
        ge=1,
    )
    ttl_seconds_after_finished: int | None = doc(
        "ttlSecondsAfterFinished: delete the job and its children this many seconds after it succeeds or "
        "fails. Unset: keep it.",
        default=None,
        ge=0,
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.earlyStopping) || has(self.evaluation)",
            check=lambda s: s.early_stopping is None or s.evaluation is not None,
            message="early stopping needs an `evaluation` block (it watches periodic evaluations)",
            field="earlyStopping",
        ),
        Rule(
            cel="!has(self.method) || !has(self.method.type) || self.method.type != 'dpo' || "
            "!has(self.dataset.format) || self.dataset.format in ['auto', 'preference']",
            check=lambda s: s.method.type != "dpo" or s.dataset.format in ("auto", "preference"),
            message="`method.type: dpo` trains on chosen/rejected pairs: set `dataset.format: preference` (or auto)",
            field="method.type",
        ),
        Rule(
            cel="!has(self.dataset.format) || self.dataset.format != 'preference' || "
            "(has(self.method) && has(self.method.type) && self.method.type == 'dpo')",
            check=lambda s: s.dataset.format != "preference" or s.method.type == "dpo",
            message="preference pairs are trained with `method.type: dpo`",
            field="dataset.format",
        ),
        Rule(
            cel="!has(self.method) || !has(self.method.type) || self.method.type != 'dpo' || "
            "!has(self.dataset.packing) || !self.dataset.packing",
            check=lambda s: s.method.type != "dpo" or not s.dataset.packing,
            message="DPO scores each answer of a pair as one sequence: packing does not apply, set "
            "`dataset.packing: false`",
            field="dataset.packing",
        ),
        Rule(
            cel="!has(self.earlyStopping) || !has(self.earlyStopping.metric) || "
            "!(self.earlyStopping.metric in " + str(list(PREFERENCE_METRICS)) + ") || "
            "(has(self.method) && has(self.method.type) && self.method.type == 'dpo')",
            check=lambda s: (
                s.early_stopping is None or s.early_stopping.metric not in PREFERENCE_METRICS or s.method.type == "dpo"
            ),
            message="reward metrics exist only for `method.type: dpo`",
            field="earlyStopping.metric",
        ),
        *OVERLAP_RULES,
    ]


class ObjectMeta(ApiModel):
    """The parts of Kubernetes' ObjectMeta that kubetune reads; the rest is kept as given."""

    model_config = ConfigDict(extra="allow")

    name: str = doc("name of the job", min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    namespace: str | None = doc("namespace of the job", default=None, max_length=63)
    labels: dict[str, str] | None = doc("labels", default=None)
    annotations: dict[str, str] | None = doc("annotations", default=None)
    generation: int | None = doc("generation", default=None)
    uid: str | None = doc("uid", default=None)


class FineTuneJob(ApiModel):
    """A fine-tuning run of a transformers model as a gang of DeepSpeed workers."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(
        alias="apiVersion", description="apiVersion: kubetune.io/v1alpha1."
    )
    kind: Literal["FineTuneJob"] = doc("kind: FineTuneJob.")
    metadata: ObjectMeta = doc("metadata: standard object metadata.")
    spec: FineTuneJobSpec = doc("spec: the desired fine-tuning run.")
    status: FineTuneJobStatus | None = doc("status: the observed state, written by the operator.", default=None)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"


def spec_fields_frozen_after_start() -> list[str]:
    """Spec fields (wire names) that may not change once a job has started: all but `suspend`, and
    `scheduling`, which may change while the job is suspended (as for Kubernetes Jobs and Kueue)."""
    return [
        field.alias or name
        for name, field in FineTuneJobSpec.model_fields.items()
        if name not in {"suspend", "scheduling"}
    ]


def immutability_cel_rule() -> dict[str, Any]:
    """The CRD's transition rule: a started job's spec is frozen except `suspend` (and `scheduling`
    while suspended)."""

    def unchanged(field: str) -> str:
        return (
            f"(has(self.spec.{field}) == has(oldSelf.spec.{field}) && "
            f"(!has(self.spec.{field}) || self.spec.{field} == oldSelf.spec.{field}))"
        )

    frozen = " && ".join(unchanged(field) for field in spec_fields_frozen_after_start())
    suspended = "has(oldSelf.spec.suspend) && oldSelf.spec.suspend && has(self.spec.suspend) && self.spec.suspend"
    scheduling = f"({suspended}) || {unchanged('scheduling')}"
    started = "has(oldSelf.status) && has(oldSelf.status.startTime)"
    return {
        "rule": f"!({started}) || ({frozen} && ({scheduling}))",
        "message": "the spec of a started FineTuneJob is immutable except `suspend` "
        "(and `scheduling` while suspended); create a new job instead",
    }


NAME_CEL_RULES: list[dict[str, Any]] = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: pod, Service and ConfigMap "
        "names are derived from it",
    },
    {
        "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
        "message": "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with "
        "a letter): it names the job's headless Service",
    },
]
