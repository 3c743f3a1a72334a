"""What a resume depends on: the fingerprint a checkpoint folder records of the job that wrote it.

A checkpoint holds a run's weights, optimizer moments, learning-rate schedule position, data position and
random state. Continuing it is only the same training when the job that continues asks for the same run:
the same starting weights, the same examples in the same order and shape, the same method and the same
optimisation. A job that differs in any of these would silently train on from another run's state (its
new `learningRate` ignored: the scheduler's state is restored from the checkpoint), so the trainer
compares this fingerprint with the one the folder recorded and refuses a difference, naming each field
(kubetune.trainer.ownership).

Counted (`COUNTED`, wire names as a manifest writes them):

- the starting weights: `model.source`, `model.revision`, `model.ggufFile`;
- the examples and their shape: `dataset.train`, `dataset.validation` (or `dataset.validationSplit` when
  no validation file is given: it decides which training examples are held out), `dataset.test` and
  `dataset.testSplit` (the split holds training examples out; the baselines, scored on the test set
  before the first step, are kept in the checkpoint), `dataset.format`,
  `dataset.maxSeqLength`, `dataset.packing`, `dataset.trainOnInputs` (which tokens are learned);
- the method: `method.type` and, for LoRA, `method.lora.rank`, `alpha`, `dropout`, `targetModules` (their
  order does not matter): the adapter's shape and what it adapts; for DPO, `method.dpo.beta`,
  `labelSmoothing`, `weights` and `reference` (the loss, what it trains, and the reference log-probabilities
  the checkpoint carries);
- the optimisation: `hyperparameters.learningRate`, `scheduler`, `warmupRatio`, `weightDecay`, `dropout`,
  `maxGradNorm`, `seed` (data order), and the batch shape `microBatchSize`, `gradientAccumulationSteps`,
  `distributed.workers` and `distributed.processesPerWorker` (the global batch, hence every data position
  and the optimizer's shards); `epochs` and `maxSteps` (the schedule decays over the total step count);
- the checkpoint's own layout and numerics: `distributed.zeroStage` (ZeRO-3 shards parameters, and a
  checkpoint of one stage does not load in another) and `distributed.precision`.

Not counted (`NOT_COUNTED`): what only observes the run or keeps it alive (`evaluation`, `earlyStopping`,
`checkpointing`, `retryPolicy`, `dataset.maxLeakageFraction`), where and how it runs (`resources`,
`image`, `scheduling`, `suspend`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`,
`distributed.accelerator`, and the memory knobs `offloadOptimizer` and `gradAccumDtype`, which a job
short of memory may need to change and resume), where it writes (`storage`: the folder is the key, not
part of it), credentials (`model.tokenSecretRef`) and how the export is shaped (`method.lora.merge`).

Paths are compared as the trainer reads them (the operator rewrites `pvc://` model and data paths to the
pod's mount paths; `kubetune run` makes local paths absolute), and files by name, not by content: hashing
a dataset of many gigabytes on every start would cost more than it protects (the trainer still warns when
the number of sequences differs). The fingerprint is a pure function of the validated spec, so a default
written out is the same as a default left out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.training import LoraSpec

#: Bumped when the meaning of a field changes (not when one is added: see `differences`).
FINGERPRINT_VERSION: Final = 1

#: The spec fields a resume depends on, by wire path (see the module docstring for why each counts).
COUNTED: Final = (
    "model.source",
    "model.revision",
    "model.ggufFile",
    "dataset.train",
    "dataset.validation",
    "dataset.validationSplit",
    "dataset.test",
    "dataset.testSplit",
    "dataset.format",
    "dataset.maxSeqLength",
    "dataset.packing",
    "dataset.trainOnInputs",
    "method.type",
    "method.lora.rank",
    "method.lora.alpha",
    "method.lora.dropout",
    "method.lora.targetModules",
    "method.dpo.beta",
    "method.dpo.labelSmoothing",
    "method.dpo.weights",
    "method.dpo.reference",
    "hyperparameters.epochs",
    "hyperparameters.maxSteps",
    "hyperparameters.learningRate",
    "hyperparameters.scheduler",
    "hyperparameters.warmupRatio",
    "hyperparameters.weightDecay",
    "hyperparameters.dropout",
    "hyperparameters.microBatchSize",
    "hyperparameters.gradientAccumulationSteps",
    "hyperparameters.maxGradNorm",
    "hyperparameters.seed",
    "distributed.workers",
    "distributed.processesPerWorker",
    "distributed.zeroStage",
    "distributed.precision",
)

#: Spec fields (and whole blocks, by prefix) that a resume does not depend on.
NOT_COUNTED: Final = (
    "model.tokenSecretRef",
    "dataset.maxLeakageFraction",
    "method.lora.merge",
    "distributed.accelerator",
    "distributed.offloadOptimizer",
    "distributed.gradAccumDtype",
    "evaluation",
    "earlyStopping",
    "checkpointing",
    "retryPolicy",
    "storage",
    "resources",
    "image",
    "scheduling",
    "suspend",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
)


@dataclass(frozen=True)
class Difference:
    """One counted field whose value differs between the folder's job and this one."""

    field: str
    """Its wire path under `spec`, e.g. `hyperparameters.learningRate`."""
    earlier: Any
    now: Any

    def __str__(self) -> str:
        return f"spec.{self.field}: {json.dumps(self.earlier)} -> {json.dumps(self.now)}"


@dataclass(frozen=True)
class Fingerprint:
    """The counted fields of one spec (JSON values) and their digest."""

    fields: dict[str, Any]
    digest: str
    """`sha256:` and the hex SHA-256 of the version and the fields as canonical JSON."""

    def differences(self, earlier: Mapping[str, Any]) -> list[Difference]:
        """The fields recorded in `earlier` whose value this fingerprint changes, in `COUNTED` order. A field
        `earlier` lacks (recorded by a kubetune that did not count it yet) is not a difference: the folder
        cannot say what it was."""
        return [
            Difference(name, earlier[name], value)
            for name, value in self.fields.items()
            if name in earlier and earlier[name] != value
        ]


def fingerprint(spec: FineTuneJobSpec) -> Fingerprint:
    """The fingerprint of what a resume of `spec` depends on."""
    fields = counted_fields(spec)
    canonical = json.dumps({"version": FINGERPRINT_VERSION, "fields": fields}, sort_keys=True, separators=(",", ":"))
    return Fingerprint(fields, "sha256:" + hashlib.sha256(canonical.encode()).hexdigest())


def counted_fields(spec: FineTuneJobSpec) -> dict[str, Any]:
    """Every `COUNTED` field's value (JSON types), by wire path; None where it does not apply."""
    model, data, hp, dist = spec.model, spec.dataset, spec.hyperparameters, spec.distributed
    lora = (spec.method.lora or LoraSpec()) if spec.method.uses_lora else None
    dpo = spec.method.preference
    values: dict[str, Any] = {
        "model.source": model.source,
        "model.revision": model.revision,
        "model.ggufFile": model.gguf_file,
        "dataset.train": data.train,
        "dataset.validation": data.validation,
        "dataset.validationSplit": data.validation_split if data.validation is None else None,
        "dataset.test": data.test,
        "dataset.testSplit": data.test_split if data.test is None else None,
        "dataset.format": data.format,
        "dataset.maxSeqLength": data.max_seq_length,
        "dataset.packing": data.packing,
        "dataset.trainOnInputs": data.train_on_inputs,
        "method.type": spec.method.type,
        "method.lora.rank": lora.rank if lora else None,
        "method.lora.alpha": lora.alpha if lora else None,
        "method.lora.dropout": lora.dropout if lora else None,
        "method.lora.targetModules": sorted(lora.target_modules) if lora and lora.target_modules else None,
        "method.dpo.beta": dpo.beta if dpo else None,
        "method.dpo.labelSmoothing": dpo.label_smoothing if dpo else None,
        "method.dpo.weights": dpo.weights if dpo else None,
        "method.dpo.reference": dpo.reference if dpo else None,
        "hyperparameters.epochs": hp.epochs,
        "hyperparameters.maxSteps": hp.max_steps,
        "hyperparameters.learningRate": hp.learning_rate,
        "hyperparameters.scheduler": hp.scheduler,
        "hyperparameters.warmupRatio": hp.warmup_ratio,
        "hyperparameters.weightDecay": hp.weight_decay,
        "hyperparameters.dropout": hp.dropout,
        "hyperparameters.microBatchSize": hp.micro_batch_size,
        "hyperparameters.gradientAccumulationSteps": hp.gradient_accumulation_steps,
        "hyperparameters.maxGradNorm": hp.max_grad_norm,
        "hyperparameters.seed": hp.seed,
        "distributed.workers": dist.workers,
        "distributed.processesPerWorker": dist.processes_per_worker,
        "distributed.zeroStage": dist.zero_stage,
        "distributed.precision": dist.precision,
    }
    return {name: values[name] for name in COUNTED}
