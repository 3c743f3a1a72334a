"""The decisions of kubetune, as pure functions shared by the operator and the local runner.

One module per policy (retry, early stopping, deadlines, suspension, the gang's shape, the status it
implies), each tested with tables beside it. Nothing here talks to Kubernetes, processes or torch.
"""
