"""The FineTuneJob API (kubetune.io/v1alpha1), written once as pydantic models.

Import the names from here: `from kubetune.api import FineTuneJob, FineTuneJobStatus`. Everyone shares
this package (CLI, operator, trainer, local runner); it imports neither side. Modules:

- base.py        the conventions every model follows: camelCase on the wire, unknown fields rejected,
                 `doc(...)` for each field's `kubectl explain` text
- job.py         FineTuneJob and its spec, the name rules, the fields frozen after start (CEL rule)
- training.py    what a user writes about the training: model, dataset, method (LoRA), hyperparameters,
                 distributed
- operations.py  how the job is run and kept alive: evaluation, early stopping, checkpointing, retry
                 policy, storage, resources, scheduling
- kubernetes_syntax.py  Kubernetes' own rules (qualified names, label values, quantities) as the API
                 server applies them, with the CEL the CRD uses for each
- status.py      FineTuneJobStatus: phase, conditions (ConditionType and Reason constants), progress,
                 metrics, evaluation results
- outcome.py     the trainer <-> supervisor contract: exit codes (ExitReason), TrainerResult,
                 ProgressSnapshot
- invocation.py  the trainer's command line and environment (TrainerInvocation), built by both
                 supervisors and parsed by `kubetune train`
- crd.py         the CRD generated from the models (`kubetune crd` > crds/finetunejob.yaml)
- validation.py  `kubetune validate`: every problem in a set of manifests, naming file, line and field
- paths.py       the output-path rule: folders a job writes overlap neither each other nor its inputs
                 (pydantic and CEL); `pvc://` paths written plainly; `overlaps`
- admission.py   the chart's ValidatingAdmissionPolicies (CEL, generated into the chart): the job's author
                 may get every Secret and claim it names; Python twins of the rules beside them
- platform_policy.py  the platform policy ConfigMap (image prefixes, PriorityClasses, toleration and
                 nodeSelector keys, gang and GPU limits), as `kubetune validate --policy` reads it
- platform_rules.py   its limits as CEL (the platform policy) and Python (`kubetune validate --policy`)
- cel_text.py    writing CEL from Python: literals, `has()` chains, reading the spec by wire path
- fingerprint.py what a resume depends on (model, data, method, optimisation): the fields and a digest
"""

from kubetune.api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION, FineTuneJob, FineTuneJobSpec
from kubetune.api.status import ConditionType, FineTuneJobStatus, Reason

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "ConditionType",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "Reason",
]
