"""`kubetune operator`: run the FineTuneJob operator (kopf) until SIGINT/SIGTERM.

Authentication is the standard one (kube.load_configuration): the in-cluster service account in a
pod, else KUBECONFIG. `run_operator` is also what the tests start in-process against an emulated API
server, with their own settings, credentials and progress source.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from dataclasses import replace
from typing import Any

import kopf
from kubernetes import client as k8s
from pydantic import ValidationError

from kubetune.api.operations import ResourcesSpec
from kubetune.operator import handlers, metrics
from kubetune.operator.caches import Caches
from kubetune.operator.kube import Kube, load_configuration
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


async def run_operator(
    settings: OperatorSettings,
    configuration: k8s.Configuration | None = None,
    progress: ProgressSource | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or a signal arrives, in the main thread)."""
    configuration = configuration or load_configuration()
    kube = Kube(configuration, settings.api_retry, settings.write_limit())
    settings = await with_kueue_detected(settings, kube)
    source = progress or HttpProgressSource(settings.progress_port, settings.progress_timeout, settings.read_limits)
    reconciler = Reconciler(kube, Caches(bool(settings.kueue)), settings, source, handlers.post_kopf_event)
    registry = handlers.build_registry(reconciler, settings, configuration)
    metrics_server: Any = None
    if settings.metrics_port is not None:
        metrics_server = metrics.serve(settings.metrics_port, settings.listen_address)
    liveness = f"http://{settings.listen_address}:{settings.health_port}/healthz" if settings.health_port else None
    try:
        await kopf.operator(
            registry=registry,
            settings=settings.kopf_settings(),
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        kube.close()


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
    )


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
    asyncio.run(run_operator(settings))
    return 0
