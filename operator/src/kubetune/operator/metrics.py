"""The operator's own Prometheus metrics, all defined here, each set by a one-line recorder.

Served on the operator's metrics port (`--metrics-port`), apart from the trainers' metrics (which the
PodMonitor scrapes from each worker's `metrics` port). Label names avoid `job`, which Prometheus owns.

- kubetune_jobs{namespace, phase}: FineTuneJobs this operator reconciles, by phase (gauge)
- kubetune_job_restarts_total{namespace}: gang restarts counted against maxRestarts
- kubetune_jobs_finished_total{result}: jobs that reached Succeeded or Failed
- kubetune_reconcile_duration_seconds: time of one reconcile (gather, decide, apply)
- kubetune_api_errors_total{verb, code}: failed Kubernetes API calls (code 0: no response), retries included
- kubetune_operator_leader: 1 while this replica holds the Lease and reconciles, 0 while it stands by

Not exported: `reconciles(namespace, name)`, how many reconciles of one job this process has run (a
per-job series would grow with every job); tests wait on it before asserting that nothing happened.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api.status import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("kubetune_jobs", "FineTuneJobs by phase.", ["namespace", "phase"], registry=REGISTRY)
RESTARTS = Counter(
    "kubetune_job_restarts", "Gang restarts counted against maxRestarts.", ["namespace"], registry=REGISTRY
)
FINISHED = Counter("kubetune_jobs_finished", "Jobs that reached Succeeded or Failed.", ["result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Duration of one reconcile of one job, in seconds.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
API_ERRORS = Counter("kubetune_api_errors", "Failed Kubernetes API calls.", ["verb", "code"], registry=REGISTRY)
LEADER = Gauge(
    "kubetune_operator_leader", "1 while this replica leads (holds the Lease), 0 while it stands by.", registry=REGISTRY
)

_phases: dict[tuple[str, str], str] = {}
_reconciles: dict[tuple[str, str], int] = {}
_lock = threading.Lock()


def _refresh(namespace: str) -> None:
    counts: dict[str, int] = {phase: 0 for phase in PHASES}
    for (ns, _), phase in _phases.items():
        if ns == namespace:
            counts[phase] = counts.get(phase, 0) + 1
    for phase, count in counts.items():
        JOBS.labels(namespace=namespace, phase=phase).set(count)


def record_phase(namespace: str, name: str, phase: str) -> None:
    """The job's phase, recorded once by every reconcile of a valid job (which also counts it)."""
    with _lock:
        _phases[(namespace, name)] = phase
        _reconciles[(namespace, name)] = _reconciles.get((namespace, name), 0) + 1
        _refresh(namespace)


def forget_job(namespace: str, name: str) -> None:
    with _lock:
        _phases.pop((namespace, name), None)
        _reconciles.pop((namespace, name), None)
        _refresh(namespace)


def reconciles(namespace: str, name: str) -> int:
    """Reconciles of the job that recorded its phase in this process (in memory only, not exported)."""
    with _lock:
        return _reconciles.get((namespace, name), 0)


def record_restart(namespace: str) -> None:
    RESTARTS.labels(namespace=namespace).inc()


def record_finished(result: str) -> None:
    FINISHED.labels(result=result).inc()


def observe_reconcile(seconds: float) -> None:
    RECONCILE_SECONDS.observe(seconds)


def record_api_error(verb: str, code: int) -> None:
    API_ERRORS.labels(verb=verb, code=str(code)).inc()


def record_leader(leading: bool) -> None:
    LEADER.set(1 if leading else 0)


def serve(port: int, address: str = "0.0.0.0") -> Any:
    """Serve /metrics on `port` in a background thread; returns the server (stop it with .shutdown() and .server_close())."""
    server, _thread = start_http_server(port, addr=address, registry=REGISTRY)
    return server
