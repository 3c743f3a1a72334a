"""What to fine-tune, on which data, how: the model, dataset, method and hyperparameter blocks.

These are the parts of a FineTuneJob's spec that a machine-learning engineer writes. Defaults follow
common fine-tuning practice: start from a pre-trained model, a low learning rate with warm-up and
decay, weight decay, gradient clipping, and a held-out validation split when none is given.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kubetune.api.base import MAX_STRING_LENGTH, ApiModel, Rule, doc
from kubetune.api.paths import plain_path_rule

#: `hf://org/name`, `pvc://claim/path` or a plain local path (the local runner only).
MODEL_SOURCE_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|[^:]+)$"
)
#: A dataset file: `pvc://claim/path/file` or a local path (the local runner, or a path in the image).
DATA_PATH_PATTERN = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/.+|[^:]+)$"
#: A Kubernetes object name (DNS-1123 subdomain).
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ShortString = Annotated[str, Field(min_length=1, max_length=253)]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the job's namespace. The operator only references it in pod specs; it never
    reads Secrets itself."""

    name: str = doc(
        "name of the Secret in the job's namespace.", min_length=1, max_length=253, pattern=K8S_NAME_PATTERN
    )
    key: str = doc("key: the key within the Secret whose value is used.", min_length=1, max_length=253)


class ModelSpec(ApiModel):
    """The pre-trained model to start from."""

    source: str = doc(
        "source of the pre-trained weights: `hf://org/name` (the Hugging Face hub, or its offline cache "
        "in the image), `pvc://claim/path` (a directory on a PersistentVolumeClaim), or a local directory "
        "or file path (only for `kubetune run`).",
        min_length=1,
        max_length=MAX_STRING_LENGTH,
        pattern=MODEL_SOURCE_PATTERN,
    )
    revision: str | None = doc(
        "revision: the hub branch, tag or commit to load (only with `hf://`). Default: the hub's default branch.",
        default=None,
        min_length=1,
        max_length=253,
    )
    gguf_file: str | None = doc(
        "ggufFile: name of a GGUF file inside `source` to load and de-quantize to full precision with "
        "transformers. Unset: load safetensors/bin weights.",
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[^/].*\.gguf$",
    )
    token_secret_ref: SecretKeyRef | None = doc(
        "tokenSecretRef: a Secret key holding a hub access token, passed to the trainer as the `HF_TOKEN` "
        "environment variable (only with `hf://`). Unset: anonymous or offline access.",
        default=None,
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.revision) || self.source.startsWith('hf://')",
            check=lambda m: m.revision is None or m.source.startswith("hf://"),
            message="`revision` is only meaningful with an `hf://` source",
            field="revision",
        ),
        Rule(
            cel="!has(self.tokenSecretRef) || self.source.startsWith('hf://')",
            check=lambda m: m.token_secret_ref is None or m.source.startswith("hf://"),
            message="`tokenSecretRef` is only meaningful with an `hf://` source",
            field="tokenSecretRef",
        ),
        plain_path_rule("source"),
    ]


DatasetFormat = Literal["auto", "text", "prompt-completion", "chat", "preference"]


class DatasetSpec(ApiModel):
    """The training, validation and test data."""

    train: str = doc(
        "train: the training file (JSONL, JSON, Parquet or CSV), as `pvc://claim/path` or a local path.",
        min_length=1,
        max_length=MAX_STRING_LENGTH,
        pattern=DATA_PATH_PATTERN,
    )
    validation: str | None = doc(
        "validation: a held-out validation file in the same format. Unset: `validationSplit` of the "
        "training file is held out.",
        default=None,
        min_length=1,
        max_length=MAX_STRING_LENGTH,
        pattern=DATA_PATH_PATTERN,
    )
    validation_split: float = doc(
        "validationSplit: fraction of the training examples held out for validation when no "
        "`validation` file is given (0 < x <= 0.5). Default 0.1.",
        default=0.1,
        gt=0,
        le=0.5,
    )
    test: str | None = doc(
        "test: a held-out test file in the same format, scored only for the verdict: the fine-tuned model, the "
        "base model and the prompting baselines are compared on it, after validation has chosen the "
        "checkpoint. Unset: `testSplit` of the training file when set, else no test set (the verdict is then "
        "scored on the validation set and says so).",
        default=None,
        min_length=1,
        max_length=MAX_STRING_LENGTH,
        pattern=DATA_PATH_PATTERN,
    )
    test_split: float | None = doc(
        "testSplit: fraction of the training examples held out as the test set when no `test` file is given "
        "(0 < x <= 0.5), chosen with the seed before the validation split, so it never changes across "
        "restarts and never overlaps training or validation. Unset: no test split.",
        default=None,
        gt=0,
        le=0.5,
    )
    format: DatasetFormat = doc(
        "format of each record: `text` ({text}), `prompt-completion` ({prompt, completion}), `chat` "
        "({messages: [{role, content}]}, rendered with the tokenizer's chat template), `preference` ({prompt "
        "or messages, chosen, rejected}: pairs for `method.type: dpo`; `chosen` and `rejected` are the "
        "answers, as text or one assistant message; a `prompt` that is a list of messages, as in TRL's "
        "conversational rows, is read as `messages`), or `auto` (detected from the first record's fields). "
        "Default auto.",
        default="auto",
    )
    max_seq_length: int = doc(
        "maxSeqLength: longest tokenized example in tokens; longer examples are truncated, counted and "
        "reported. Default 1024.",
        default=1024,
        ge=8,
        le=131072,
    )
    packing: bool = doc(
        "packing: pack several examples into one sequence of up to `maxSeqLength` tokens. Attention and "
        "loss never cross an example boundary (position ids restart per example). Default false.",
        default=False,
    )
    train_on_inputs: bool = doc(
        "trainOnInputs: compute the loss on prompt / user tokens too. Default false: only completion and "
        "assistant tokens are learned.",
        default=False,
    )
    max_leakage_fraction: float = doc(
        "maxLeakageFraction: largest fraction of validation examples that may also appear verbatim in the "
        "training set before the job fails as a data error (0-1; 1 allows any). Default 0.01.",
        default=0.01,
        ge=0,
        le=1,
    )

    rules: ClassVar[list[Rule]] = [
        plain_path_rule("train"),
        plain_path_rule("validation"),
        plain_path_rule("test"),
        Rule(
            cel="!has(self.test) || !has(self.testSplit)",
            check=lambda d: d.test is None or d.test_split is None,
            message="set either a `test` file or a `testSplit` fraction, not both",
            field="testSplit",
        ),
    ]


class LoraSpec(ApiModel):
    """Low-rank adaptation (peft) settings."""

    rank: int = doc("rank of the LoRA update matrices. Default 16.", default=16, ge=1, le=1024)
    alpha: float = doc("alpha: LoRA scaling numerator (scale = alpha / rank). Default 32.", default=32, gt=0)
    dropout: float = doc("dropout on the LoRA input (0 <= x < 1). Default 0.05.", default=0.05, ge=0, lt=1)
    target_modules: list[ShortString] | None = doc(
        "targetModules: names of the modules to adapt (e.g. q_proj, v_proj). Unset: peft's default for "
        "the model's architecture.",
        default=None,
        min_length=1,
        max_length=64,
    )
    merge: bool = doc(
        "merge: merge the adapter into the base weights when exporting. Default true; false exports the adapter alone.",
        default=True,
    )


class DpoSpec(ApiModel):
    """Direct preference optimisation (DPO) settings."""

    beta: float = doc(
        "beta: strength of the pull towards the reference model in the DPO loss (reward = beta x log-ratio); "
        "higher stays closer to the reference. Default 0.1.",
        default=0.1,
        gt=0,
        le=10,
    )
    label_smoothing: float = doc(
        "labelSmoothing: the fraction of preference labels assumed wrong (conservative DPO, 0 <= x <= 0.49). "
        "Default 0: the paper's loss.",
        default=0.0,
        ge=0,
        # Not `lt=0.5`: the API server checks an exclusive fractional maximum as if it were 0 (it refused
        # the CRD's own default, 0, as "should be less than 0"); an inclusive one it checks right.
        le=0.49,
    )
    weights: Literal["full", "lora"] = doc(
        "weights: what DPO updates: `full` (every weight) or `lora` (low-rank adapters; `method.lora` "
        "settings apply). Default full.",
        default="full",
    )
    reference: Literal["precomputed", "live"] = doc(
        "reference: how the reference model's log-probabilities are had. `precomputed`: once, before the "
        "first step, by the starting weights (which are the reference), kept in every checkpoint: no second "
        "model in memory, one forward pass per pair. `live`: at every step with the LoRA adapters disabled "
        "(the same weights, no copy; needs `weights: lora`). Default precomputed.",
        default="precomputed",
    )

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.reference) || self.reference != 'live' || (has(self.weights) && self.weights == 'lora')",
            check=lambda d: d.reference != "live" or d.weights == "lora",
            message="`reference: live` disables LoRA adapters to get the reference: it needs `weights: lora` "
            "(with full weights, `precomputed` gives the same reference log-probabilities without a second model)",
            field="reference",
        )
    ]


class MethodSpec(ApiModel):
    """Full fine-tuning, LoRA, or preference tuning (DPO)."""

    type: Literal["full", "lora", "dpo"] = doc(
        "type: `full` updates every weight; `lora` trains low-rank adapters only; `dpo` tunes on "
        "chosen/rejected pairs (`dataset.format: preference`) with direct preference optimisation, over "
        "full weights or LoRA adapters (`dpo.weights`). Default full.",
        default="full",
    )
    lora: LoraSpec | None = doc(
        "lora: LoRA settings; only allowed with `type: lora` or `dpo.weights: lora` (defaults apply when omitted).",
        default=None,
    )
    dpo: DpoSpec | None = doc(
        "dpo: DPO settings; only allowed with `type: dpo` (defaults apply when omitted).", default=None
    )

    @property
    def uses_lora(self) -> bool:
        """Whether LoRA adapters are trained (and merged on export)."""
        return self.type == "lora" or (self.type == "dpo" and self.dpo is not None and self.dpo.weights == "lora")

    @property
    def preference(self) -> DpoSpec | None:
        """The DPO settings of a `dpo` job (defaults filled in); None for supervised fine-tuning."""
        return (self.dpo or DpoSpec()) if self.type == "dpo" else None

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.lora) || self.type == 'lora' || "
            "(self.type == 'dpo' && has(self.dpo) && has(self.dpo.weights) && self.dpo.weights == 'lora')",
            check=lambda m: m.lora is None or m.uses_lora,
            message="a `lora` block is only allowed with `type: lora` or `dpo.weights: lora`",
            field="lora",
        ),
        Rule(
            cel="!has(self.dpo) || self.type == 'dpo'",
            check=lambda m: m.dpo is None or m.type == "dpo",
            message="a `dpo` block is only allowed with `type: dpo`",
            field="dpo",
        ),
    ]


class HyperparametersSpec(ApiModel):
    """Optimisation settings. AdamW is the optimizer."""

    epochs: int = doc("epochs: passes over the training set. Default 3.", default=3, ge=1, le=1000)
    max_steps: int | None = doc(
        "maxSteps: stop after this many optimizer steps, whichever comes first with `epochs`. Unset: "
        "`epochs` alone decide.",
        default=None,
        ge=1,
    )
    learning_rate: float = doc(
        "learningRate: peak learning rate after warm-up. Default 2e-5 (fine-tuning wants a low rate).",
        default=2e-5,
        gt=0,
        le=1,
    )
    scheduler: Literal["constant", "linear", "cosine"] = doc(
        "scheduler: learning-rate decay after warm-up. Default cosine.", default="cosine"
    )
    warmup_ratio: float = doc(
        "warmupRatio: fraction of the total steps spent warming up linearly from 0 (0-0.5). Default 0.03.",
        default=0.03,
        ge=0,
        le=0.5,
    )
    weight_decay: float = doc(
        "weightDecay: AdamW decoupled weight decay (0-1). Default 0.01.", default=0.01, ge=0, le=1
    )
    dropout: float | None = doc(
        "dropout: overrides the model's own dropout probabilities (0 <= x < 1). Unset: keep the model's.",
        default=None,
        ge=0,
        lt=1,
    )
    micro_batch_size: int = doc(
        "microBatchSize: examples (or packed sequences) per process per forward pass. Default 4.",
        default=4,
        ge=1,
        le=4096,
    )
    gradient_accumulation_steps: int = doc(
        "gradientAccumulationSteps: micro-batches accumulated per optimizer step. Default 1.",
        default=1,
        ge=1,
        le=4096,
    )
    max_grad_norm: float = doc(
        "maxGradNorm: clip the global gradient norm to this value; 0 disables clipping. Default 1.0.",
        default=1.0,
        ge=0,
    )
    seed: int = doc(
        "seed for data order, the validation split and initialisation of new weights. Default 42.",
        default=42,
        ge=0,
        le=2**31 - 1,
    )


Accelerator = Literal["nvidia-gpu", "cpu"]
#: What an unset `distributed.accelerator` means in a cluster (and for a trainer rank started by hand):
#: a GPU job, the common case, so a job without the field keeps asking for `nvidia.com/gpu`. Only
#: `kubetune run`, which can look at the machine before it starts, decides at run time.
CLUSTER_DEFAULT_ACCELERATOR: Accelerator = "nvidia-gpu"


class DistributedSpec(ApiModel):
    """How the work is spread over pods and processes."""

    workers: int = doc("workers: pods in the gang (nodes). Default 1.", default=1, ge=1, le=256)
    processes_per_worker: int = doc(
        "processesPerWorker: trainer processes per pod; with `accelerator: nvidia-gpu`, GPUs per pod. Default 1.",
        default=1,
        ge=1,
        le=16,
    )
    accelerator: Accelerator | None = doc(
        "accelerator: `nvidia-gpu` requests `processesPerWorker` GPUs (`nvidia.com/gpu`) per pod and uses "
        "NCCL; `cpu` trains on CPUs with gloo. Unset: nvidia-gpu in a cluster; `kubetune run` uses the GPUs "
        "when a CUDA device is visible and the CPU otherwise, and says which.",
        default=None,
    )
    zero_stage: int = doc(
        "zeroStage: DeepSpeed ZeRO stage (0-3): 1 shards optimizer state, 2 also gradients, 3 also "
        "parameters (the model is loaded straight into shards and exported one parameter at a time, so it "
        "never has to fit on one device). Default 2.",
        default=2,
        ge=0,
        le=3,
    )
    offload_optimizer: bool = doc(
        "offloadOptimizer: keep optimizer state in CPU memory (ZeRO-Offload; needs zeroStage >= 1). Default false.",
        default=False,
    )
    precision: Literal["bf16", "fp16", "fp32"] = doc(
        "precision of the training computation. Default bf16.", default="bf16"
    )
    grad_accum_dtype: Literal["fp32", "precision"] | None = doc(
        "gradAccumDtype: what gradients are accumulated in across micro-batches with bf16 or fp16 `precision`: "
        "`fp32` (a separate fp32 gradient buffer; needs zeroStage >= 1) or `precision` (the training precision: "
        "half the gradient memory, but bf16's 8-bit mantissa loses small contributions as micro-batches add up). "
        "Unset: fp32 at zeroStage >= 1, the precision at zeroStage 0. No effect with fp32 precision.",
        default=None,
    )

    @property
    def cluster_accelerator(self) -> Accelerator:
        """What the pods use: the accelerator asked for, nvidia-gpu when it is unset."""
        return self.accelerator or CLUSTER_DEFAULT_ACCELERATOR

    rules: ClassVar[list[Rule]] = [
        Rule(
            cel="!has(self.offloadOptimizer) || !self.offloadOptimizer || !has(self.zeroStage) || self.zeroStage >= 1",
            check=lambda d: not d.offload_optimizer or d.zero_stage >= 1,
            message="`offloadOptimizer` needs `zeroStage` of 1 or more",
            field="offloadOptimizer",
        ),
        Rule(
            cel="!has(self.gradAccumDtype) || self.gradAccumDtype != 'fp32' || "
            "(has(self.precision) && self.precision == 'fp32') || !has(self.zeroStage) || self.zeroStage >= 1",
            check=lambda d: d.grad_accum_dtype != "fp32" or d.precision == "fp32" or d.zero_stage >= 1,
            message="`gradAccumDtype: fp32` with bf16 or fp16 precision needs `zeroStage` of 1 or more "
            "(DeepSpeed keeps the fp32 gradients in its ZeRO optimizer)",
            field="gradAccumDtype",
        ),
    ]
