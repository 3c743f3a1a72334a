"""The operator's settings, in one place, with the kopf settings derived from them.

Every timing the operator depends on is here, so tests can shorten them and production can reason
about them. kopf's own defaults are not left implicit: retries and timeouts are bounded, and kopf's
peering is off (`standalone`): which replica reconciles is decided by a Lease (`leader_election`,
kubetune.operator.lease), as for every Go controller, and only the leader runs kopf at all. Without
leader election the operator must run as one replica (the chart then deploys it with Recreate).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from kubetune.api.operations import ResourcesSpec
from kubetune.operator.builders import METRICS_PORT, BuildSettings
from kubetune.operator.informer import WatchTimeouts
from kubetune.operator.kube import RetrySettings
from kubetune.operator.lease import LeaderElection
from kubetune.operator.network_policy import GangNetwork
from kubetune.operator.progress import ReadLimits
from kubetune.operator.ratelimit import WriteLimit
from kubetune.policies.mass_node_loss import Thresholds
from kubetune.policies.progress_cadence import Cadence

#: Namespaces of the cluster itself, where the operator never runs a job.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
#: Environment variable with the operator's own namespace (the chart sets it from the downward API).
OPERATOR_NAMESPACE_ENV = "POD_NAMESPACE"
#: Where a pod finds its own namespace when the environment does not say it.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def protected_namespaces() -> tuple[str, ...]:
    """The system namespaces and the operator's own, when known (environment, else the pod's service
    account; an operator run outside a pod without the variable has none of its own)."""
    own = os.environ.get(OPERATOR_NAMESPACE_ENV, "")
    if not own and SERVICE_ACCOUNT_NAMESPACE.is_file():
        own = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return SYSTEM_NAMESPACES + ((own,) if own and own not in SYSTEM_NAMESPACES else ())


#: Environment variable that gives the default trainer image (the Helm chart sets it).
TRAINER_IMAGE_ENV = "KUBETUNE_TRAINER_IMAGE"
DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"
FINALIZER = "kubetune.io/finalizer"


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: all namespaces (cluster-wide)."""
    trainer_image: str = field(default_factory=lambda: os.environ.get(TRAINER_IMAGE_ENV, DEFAULT_TRAINER_IMAGE))
    """Image for jobs without `spec.image`."""
    reconcile_interval: float = 5.0
    """Seconds between two reconciles of a job that is not running when no event queues it earlier (pod
    and job changes do). A reconcile reads only the caches: the API server sees a request only when
    something must change. Deadlines fire on time whatever the interval (each reconcile says when the
    next one is due)."""
    running_resync_interval: float = 300.0
    """Seconds between two reconciles of a running job when nothing asks for one: its pods' and its own
    changes do, and so does its rank 0 when progress has something to say (kubetune.operator.progress_poller).
    At 1,000 running jobs a 5 s interval cost 0.14 cores with nothing changing."""
    progress_write_interval: float = 15.0
    """Shortest time between two progress writes to one job's status, in seconds, and how often rank 0 is
    read while its progress changes: progress in the status is at most about this old."""
    progress_unchanged_read_max: float = 60.0
    """Longest pause between two reads of a rank 0 whose progress does not change, in seconds."""
    progress_failing_read_max: float = 30.0
    """Longest pause between two reads of a rank 0 that cannot be reached or answers badly, in seconds."""
    progress_readers: int = 16
    """Progress reads in flight at once, across all jobs, outside the reconcile workers."""
    min_interval: float = 0.1
    """Shortest pause between two reconciles of a job, in seconds (a floor against busy loops)."""
    finished_interval: float = 30.0
    """Seconds between reconciles of a finished job (only its TTL and leftover pods matter)."""
    error_backoff: tuple[float, float] = (1.0, 60.0)
    """(first, longest) wait in seconds after a failed reconcile; doubles between them."""
    progress_port: int = METRICS_PORT
    """Port of rank 0's `GET /progress` on worker 0's pod IP."""
    progress_timeout: float = 2.0
    """Seconds one request to rank 0 may take in all (connecting, sending, reading the whole body): a pod
    that trickles bytes or holds the connection open holds a reconcile worker no longer than this."""
    read_limits: ReadLimits = field(default_factory=ReadLimits)
    """Largest bodies read from rank 0 (kubetune.operator.progress): a larger answer is refused unread."""
    progress_unreachable_after: float = 60.0
    """Seconds reads of rank 0's progress must fail at the connection (refused, timed out) before the job
    says ProgressUnavailable (kubetune.policies.progress_reach): longer than a trainer takes to start
    serving (imports and rendezvous, while its port is closed), short enough to be seen while it trains."""
    result_handover_seconds: float = 120.0
    """Seconds rank 0 keeps its whole result at GET /result for the operator (BuildSettings has why)."""
    metrics_port: int | None = 8080
    """Port of the operator's /metrics; None: not served."""
    health_port: int | None = 8081
    """Port of the probes, /healthz and /readyz (kubetune.operator.health); None: not served."""
    listen_address: str = "0.0.0.0"
    api_retry: RetrySettings = field(default_factory=RetrySettings)
    watch_server_timeout: int = 300
    """Seconds the API server keeps a watch open before it is resumed (kopf's and the caches')."""
    watch_client_timeout: int = 330
    """Seconds a silent watch is waited on before reconnecting (more than the server's)."""
    cache_sync_timeout: float = 60.0
    """Seconds the caches may take to list everything at start before the operator gives up and says why."""
    reconcile_workers: int = 64
    """Reconciles that run at once (each job is reconciled by one at a time; kubetune.operator.workqueue).
    A reconcile waits on rank 0 only to take a finished run's whole result (once per run, at most
    `ReadLimits.results_at_once` at a time); progress is read outside them."""
    api_writes_per_second: float = 200.0
    """Sustained API writes (creates, patches, deletes) per second; a launch is about 5 writes."""
    api_write_burst: int = 400
    """API writes allowed at once after a quiet period."""

    kueue: bool | None = None
    """Run jobs with `spec.scheduling.queueName` as a Kueue external framework: one Workload per job, no pod
    before Kueue admits it (kubetune.operator.workloads). None (default, `--kueue auto`): on when the API
    server serves Kueue's Workload API at start. Off, a job that names a queue is never run unqueued: it
    waits, Pending, with reason QueueUnavailable."""
    protected_namespaces: tuple[str, ...] = field(default_factory=protected_namespaces)
    """Namespaces where the operator runs no job, whatever its RBAC allows: the cluster's own and the
    operator's (a job there fails with reason ProtectedNamespace)."""

    trainer_resources: ResourcesSpec | None = None
    """Worker-pod resources for jobs that set no `spec.resources`; None: none requested."""
    gang_network: GangNetwork | None = None
    """Who may reach each attempt's pods: one NetworkPolicy per attempt (kubetune.operator.network_policy);
    None: none is made (`--gang-network-policy` unset; the chart sets it unless `networkPolicy.enabled` is false)."""

    node_outage: Thresholds = field(default_factory=Thresholds)
    """When silent nodes are a mass outage that holds the jobs instead of costing their gangs
    (kubetune.policies.mass_node_loss): `unhealthy_share`, 0.55 as the node lifecycle controller's
    `--unhealthy-zone-threshold`; None turns the brake off."""

    leader_election: LeaderElection | None = None
    """The Lease that decides which replica leads (`--leader-elect`); None: this process leads at once (one
    replica only)."""

    def progress_cadence(self) -> Cadence:
        return Cadence(
            write_interval=self.progress_write_interval,
            unchanged_read_max=max(self.progress_unchanged_read_max, self.progress_write_interval),
            failing_read_max=self.progress_failing_read_max,
            unreachable_after=self.progress_unreachable_after,
        )

    def watch_timeouts(self) -> WatchTimeouts:
        return WatchTimeouts(
            server=self.watch_server_timeout,
            client=float(self.watch_client_timeout),
            request=self.api_retry.request_timeout,
            retry=self.error_backoff,
        )

    def write_limit(self) -> WriteLimit:
        return WriteLimit(per_second=self.api_writes_per_second, burst=self.api_write_burst)

    def build_settings(self) -> BuildSettings:
        return BuildSettings(
            trainer_image=self.trainer_image,
            default_resources=self.trainer_resources,
            result_handover_seconds=self.result_handover_seconds,
            gang_network=self.gang_network,
        )

    def kopf_settings(self) -> kopf.OperatorSettings:
        """kopf's settings, every one that matters set explicitly."""
        settings = kopf.OperatorSettings()
        settings.peering.standalone = True  # one replica (Recreate); see the module docstring
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="kubetune.io", key="last-handled-configuration"
        )
        settings.watching.server_timeout = self.watch_server_timeout
        settings.watching.client_timeout = self.watch_client_timeout
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = self.api_retry.request_timeout
        settings.networking.connect_timeout = 10
        settings.networking.error_backoffs = [1, 2, 4, 8, 16]  # then the call fails and is logged
        settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
        settings.execution.max_workers = 8
        settings.posting.level = logging.INFO
        return settings
