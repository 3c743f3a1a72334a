"""kubetune: fine-tune transformers models on Kubernetes as a gang of DeepSpeed workers, or on one
machine with `kubetune run`.

The package is split by who needs what: `kubetune.api` (the FineTuneJob models, shared by everyone),
`kubetune.policies` (the pure decisions shared by the operator and the local runner),
`kubetune.operator` (the kopf controller, no torch), `kubetune.trainer` (the DeepSpeed program in each
pod) and `kubetune.local` (the one-machine runner).
"""

__version__ = "0.1.0"
