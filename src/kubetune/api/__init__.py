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
