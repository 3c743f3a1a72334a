"""Monitoring as code: the metrics kubetune publishes, the alert rules and the Grafana dashboard over them.

Each artefact has one source here and is generated into the Helm chart (`make generate`), where a
drift test keeps the checked-in copy equal to its source, as for the CRD. Nothing here runs in the
operator or the trainer: the dashboard builder needs `grafana-foundation-sdk`, a build-time (test
extra) dependency, and is imported only by the generator and the tests.

- metrics.py    the catalogue of published metrics (trainer and operator), checked against real scrapes
- alerts.py     the alert rules as data (thresholds as constants), rendered as a Prometheus rule file
- dashboard.py  the Grafana dashboard, built with grafana-foundation-sdk from a table of panels
- generate.py   `make generate`: writes the chart's files/ and the README's metrics table; `--check`
"""
