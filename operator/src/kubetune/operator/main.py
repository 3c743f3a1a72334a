"""`kubetune operator`: run the FineTuneJob operator (kopf) until SIGINT/SIGTERM.

With `--leader-elect` (the chart's default, two replicas) each replica stands by, serving its probes and
metrics, until it holds the Lease (kubetune.operator.lease); the leader then runs kopf, the caches and the
reconcile workers. A leader that cannot renew the Lease in time stops writing and exits with status 1
(the kubelet restarts it as a standby); one stopped by SIGTERM (an upgrade, a drain) releases the Lease
first, so that the standby leads at its next try instead of after the lease duration.

Authentication is the standard one (kube.load_configuration): the in-cluster service account in a
pod, else KUBECONFIG. `run_operator` is also what the tests start in-process against an emulated API
server, with their own settings, credentials and progress source.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from dataclasses import replace
from typing import Any

import kopf
from kubernetes import client as k8s
from pydantic import ValidationError

from kubetune.api.operations import ResourcesSpec
from kubetune.operator import handlers, metrics
from kubetune.operator.builders import METRICS_PORT
from kubetune.operator.caches import Caches
from kubetune.operator.events import EventRecorder
from kubetune.operator.health import HealthServer, OperatorState
from kubetune.operator.kube import Kube, load_configuration
from kubetune.operator.leader_election import LeaseTimings
from kubetune.operator.lease import Elector, LeaderElection
from kubetune.operator.network_policy import GangNetwork, parse_gang_network
from kubetune.operator.progress import HttpProgressSource, ProgressSource, ReadLimits
from kubetune.operator.reconciler import Reconciler
from kubetune.operator.settings import (
    DEFAULT_TRAINER_IMAGE,
    OPERATOR_NAMESPACE_ENV,
    TRAINER_IMAGE_ENV,
    OperatorSettings,
    protected_namespaces,
)
from kubetune.policies.mass_node_loss import UNHEALTHY_SHARE, Thresholds

logger = logging.getLogger(__name__)


class LeadershipLost(Exception):
    """This replica could not renew its Lease in time: it stopped writing, and the process exits (1)."""


async def run_operator(
    settings: OperatorSettings,
    configuration: k8s.Configuration | None = None,
    progress: ProgressSource | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or a signal arrives, in the main thread). With leader
    election, stand by until this replica holds the Lease, then lead; LeadershipLost when it loses it."""
    configuration = configuration or load_configuration()
    election = settings.leader_election
    kube = Kube(configuration, settings.api_retry, settings.write_limit(), election.identity if election else "")
    state = OperatorState()
    stop = await _as_asyncio_event(stop_flag)
    metrics_server: Any = None
    health: HealthServer | None = None
    elector = Elector(kube.api_client, election) if election else None
    try:
        if settings.metrics_port is not None:
            metrics_server = metrics.serve(settings.metrics_port, settings.listen_address)
        if settings.health_port is not None:
            health = await HealthServer(state, settings.listen_address, settings.health_port).start()
        if elector is not None:
            state.role = "standby"
            metrics.record_leader(False)
            if not await elector.acquire(stop):
                return
            kube.fence = elector.check
        state.role = "leader"
        metrics.record_leader(True)
        if not await lead(settings, configuration, kube, state, progress, stop, elector, ready_flag):
            assert elector is not None
            raise LeadershipLost(f"{elector.identity} could not renew the Lease {election.lease if election else ''}")
    finally:
        state.role = "stopping"
        if elector is not None:
            await elector.release()
        metrics.record_leader(False)
        if health is not None:
            await health.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        kube.close()


async def lead(
    settings: OperatorSettings,
    configuration: k8s.Configuration,
    kube: Kube,
    state: OperatorState,
    progress: ProgressSource | None,
    stop: asyncio.Event,
    elector: Elector | None,
    ready_flag: asyncio.Event | threading.Event | None,
) -> bool:
    """Reconcile (kopf, the caches, the workers) until `stop`, or until the Lease is lost (False)."""
    settings = await with_kueue_detected(settings, kube)
    if progress is None:
        http = HttpProgressSource(settings.progress_port, settings.progress_timeout, settings.read_limits)
        http.open()  # closed when kopf stops, below
    source = progress or http
    events = EventRecorder(kube, elector.identity if elector else "")
    reconciler = Reconciler(kube, Caches(bool(settings.kueue)), settings, source, events.post)
    registry = handlers.build_registry(reconciler, settings, configuration, state)
    kopf_stop = asyncio.Event()
    keeper = asyncio.create_task(elector.keep_leading(stop) if elector else stop.wait())
    keeper.add_done_callback(lambda _: kopf_stop.set())
    stopper = asyncio.create_task(stop.wait())
    stopper.add_done_callback(lambda _: kopf_stop.set())
    try:
        await kopf.operator(
            registry=registry,
            settings=settings.kopf_settings(),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            stop_flag=kopf_stop,
            ready_flag=ready_flag,
        )
        await events.flush()
    finally:
        if progress is None:
            await http.close()
        stopper.cancel()
        if not keeper.done():  # kopf stopped on its own (a signal): still leading, released by the caller
            keeper.cancel()
        outcome = (await asyncio.gather(keeper, return_exceptions=True))[0]
    if isinstance(outcome, Exception):
        logger.error("renewing the Lease failed unexpectedly: %r", outcome)
        return False
    return outcome is not False


async def _as_asyncio_event(flag: asyncio.Event | threading.Event | None) -> asyncio.Event:
    """`flag` as an event of this loop (a thread's flag is polled every 0.1 s)."""
    if isinstance(flag, asyncio.Event):
        return flag
    event = asyncio.Event()
    if flag is not None:

        async def follow(threaded: threading.Event) -> None:
            while not threaded.is_set():
                await asyncio.sleep(0.1)
            event.set()

        _followers.add(asyncio.get_running_loop().create_task(follow(flag)))
    return event


#: The tasks that follow a thread's stop flag (kept referenced while they run).
_followers: set[asyncio.Task[None]] = set()


async def with_kueue_detected(settings: OperatorSettings, kube: Kube) -> OperatorSettings:
    """The settings with the Kueue integration decided: unset (`--kueue auto`) follows whether Kueue's
    Workload API is served, read once at start (an operator started before Kueue was installed must be
    restarted to use it)."""
    if settings.kueue is not None:
        return settings
    served = await kube.serves_kueue()
    logger.info(
        "Kueue integration %s: Kueue's Workload API is %s",
        "on" if served else "off",
        "served" if served else "not served",
    )
    return replace(settings, kueue=served)


#: `--kueue` as the settings' field.
KUEUE_MODES = {"auto": None, "on": True, "off": False}


def settings_from_args(args: argparse.Namespace) -> OperatorSettings:
    namespaces: tuple[str, ...] = () if args.all_namespaces else tuple(args.namespace)
    image = args.trainer_image
    resources = getattr(args, "trainer_resources", None)
    return OperatorSettings(
        namespaces=namespaces,
        **({"trainer_image": image} if image else {}),
        trainer_resources=ResourcesSpec.model_validate_json(resources) if resources else None,
        metrics_port=args.metrics_port or None,
        health_port=args.health_port or None,
        result_handover_seconds=getattr(args, "result_handover_seconds", 120.0),
        progress_unreachable_after=getattr(args, "progress_unreachable_after", 60.0),
        progress_write_interval=getattr(args, "progress_write_interval", 15.0),
        progress_readers=int(getattr(args, "progress_readers", 16)),
        progress_port=int(getattr(args, "progress_port", METRICS_PORT)),
        kueue=KUEUE_MODES[getattr(args, "kueue", "auto")],
        read_limits=ReadLimits(
            progress_bytes=int(getattr(args, "progress_max_bytes", ReadLimits.progress_bytes)),
            result_bytes=int(getattr(args, "result_max_bytes", ReadLimits.result_bytes)),
        ),
        api_writes_per_second=getattr(args, "api_writes_per_second", 200.0),
        api_write_burst=int(getattr(args, "api_write_burst", 400)),
        reconcile_workers=int(getattr(args, "reconcile_workers", 64)),
        gang_network=gang_network(getattr(args, "gang_network_policy", None)),
        node_outage=Thresholds(unhealthy_share=getattr(args, "node_outage_share", UNHEALTHY_SHARE)),
        protected_namespaces=tuple(
            dict.fromkeys(protected_namespaces() + tuple(getattr(args, "protected_namespace", [])))
        ),
        leader_election=leader_election(args),
    )


#: Environment variable with the operator pod's name (the chart sets it from the downward API).
POD_NAME_ENV = "POD_NAME"


def leader_election(args: argparse.Namespace) -> LeaderElection | None:
    """`--leader-elect` and its settings; ValueError naming the flag that is wrong."""
    if not getattr(args, "leader_elect", False):
        return None
    namespace = args.leader_election_namespace or os.environ.get(OPERATOR_NAMESPACE_ENV, "")
    if not namespace:
        raise ValueError(
            f"--leader-elect needs the Lease's namespace: set --leader-election-namespace or {OPERATOR_NAMESPACE_ENV}"
        )
    try:
        timings = LeaseTimings(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as error:
        raise ValueError(f"--lease-duration/--renew-deadline/--retry-period: {error}") from None
    identity = args.leader_election_identity or os.environ.get(POD_NAME_ENV) or socket.gethostname()
    return LeaderElection(namespace, args.leader_election_lease, f"{identity}_{uuid.uuid4().hex[:8]}", timings)


def gang_network(flag: str | None) -> GangNetwork | None:
    """`--gang-network-policy` as settings; ValueError naming what is wrong."""
    if not flag:
        return None
    try:
        return parse_gang_network(flag, os.environ.get(OPERATOR_NAMESPACE_ENV, ""))
    except ValueError as error:
        raise ValueError(f"--gang-network-policy: {error}") from None


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"error: --trainer-resources: {problems}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    scope = ", ".join(settings.namespaces) if settings.namespaces else "all namespaces"
    logger.info(
        "kubetune operator: watching %s; trainer image %s (default %s, env %s)",
        scope,
        settings.trainer_image,
        DEFAULT_TRAINER_IMAGE,
        TRAINER_IMAGE_ENV,
    )
    try:
        asyncio.run(run_until_signalled(settings))
    except LeadershipLost as error:
        logger.error("%s: exiting; the kubelet restarts this replica as a standby", error)
        return 1
    return 0


async def run_until_signalled(settings: OperatorSettings) -> None:
    """`run_operator`, stopped by SIGINT or SIGTERM also while standing by (kopf handles them while it runs)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await run_operator(settings, stop_flag=stop)
