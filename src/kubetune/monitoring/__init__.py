"""Monitoring as code: the metrics kubetune publishes, the alert rules and the Grafana dashboard over them.

Each artefact has one source here and is generated into the Helm chart (`make generate`), where a
drift test keeps the checked-in copy equal to its source, as for the CRD. Nothing here runs in the
operator or the trainer: the dashboard builder needs `grafana-foundation-sdk`, a build-time (test
extra) dependency, and is imported only by the generator and the tests.
"""
