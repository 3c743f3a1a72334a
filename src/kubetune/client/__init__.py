"""`kubetune status`: a FineTuneJob in a cluster, read with the user's own kubeconfig.

The user's side of a cluster, next to the operator's: it only reads (the job, its events and, when asked,
Prometheus) and renders the report `kubetune run` writes (`kubetune.view.report`). It needs the official
`kubernetes` client (`pip install 'kubetune[status]'`), imported only when the command runs, and never
the operator, kopf, torch or the trainer (an import-linter contract in pyproject.toml).

- status.py      the command: one report, or `-w` following the job until it finishes; exit codes;
                 every failure turned into one sentence that says what to do
- cluster.py     the kubeconfig (`--kubeconfig`, KUBECONFIG, ~/.kube/config, in-cluster), the job and its
                 events as plain dicts, and API errors as `ClusterError` sentences
- prometheus.py  the loss history from the chart's Prometheus (`--prometheus URL`), for the chart
"""
