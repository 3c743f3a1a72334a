"""The dashboard and alerts against a real Prometheus scraping a real training run and the real operator.

One story, shared by every test here (about a minute on two cores):
- a real trainer (two CPU ranks under torchrun, the tiny model, evaluations and checkpoints) serves its
  metrics, lingering after the run so that the final values are scraped;
- the real operator runs against the emulated API server (tests/support/apiserver) with its metrics port
  open and reads the live trainer's `/progress`; the job is launched, its first gang fails (exit 1) and
  is restarted, and the second succeeds with the real trainer's termination message. The API server
  answers the first pod create with 503 (an overloaded API server), so the operator's retry path and
  API-error metric run for real;
- Prometheus (Debian's binary) scrapes both every second with the generated alert rules loaded.

Then every query of every dashboard panel, with Grafana's variables filled in as Grafana would, must
return data; the variables must list the job; the exposition must pass `promtool check metrics` and
match the catalogue; and no alert may fire on this healthy run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import pytest
from kmock._internal import enums, rendering

from kubetune.monitoring import generate
from kubetune.monitoring.alerts import render_rule_file
from kubetune.monitoring.dashboard import panel_queries
from kubetune.monitoring.metrics import OPERATOR_METRICS, TRAINER_METRICS, Metric
from kubetune.operator import metrics as operator_metrics
from tests.support import launch, tiny
from tests.support.apiserver import PODS, ApiServer, Cluster, declare_resources, fast_settings
from tests.support.builders import a_cpu_gang
from tests.support.ports import free_port
from tests.support.prometheus import Prometheus, get
from tests.support.waiting import eventually_async

pytestmark = [
    pytest.mark.timeout(300),
    # Known leak outside this area: after this long story, tearing down the emulated cluster
    # (tests/support/apiserver.Cluster: kmock's server socket, an aiohttp ClientSession) leaves a socket
    # and a session to the garbage collector; shorter Cluster lifetimes do not. Only these two are ignored.
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning",
        r"ignore:Exception ignored in. <function ClientSession\.__del__:pytest.PytestUnraisableExceptionWarning",
    ),
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("promtool") is None,
        reason="needs Debian's prometheus package (prometheus and promtool)",
    ),
]

JOB = "promjob"
NAMESPACE = "default"
DASHBOARD = json.loads((generate.ROOT / "charts/kubetune/files/dashboards/kubetune.json").read_text())
QUERIES = panel_queries(json.dumps(DASHBOARD))
GPU_METRICS = {m.name for m in TRAINER_METRICS if m.gpu_only}
#: Published by preference tuning only; the story's job is supervised (tests/slow/trainer/test_dpo.py
#: checks a DPO run's exposition against the catalogue).
DPO_METRICS = {m.name for m in TRAINER_METRICS if m.dpo_only}
#: Grafana's `$__rate_interval` for a 1 s scrape interval: max(4 x scrape interval, step + scrape interval).
RATE_INTERVAL = "5s"


class FlakyApiServer(ApiServer):
    """Emulates a briefly overloaded API server: the first pod create is answered 503 ServiceUnavailable,
    as kube-apiserver does under load; everything after is served normally."""

    refused = False

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        is_pod_create = request.action == enums.action.CREATE and str(request.resource) == str(kmock.resource(PODS))
        if is_pod_create and not self.refused:
            self.refused = True
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "ServiceUnavailable"}
            return aiohttp.web.json_response({**status, "code": 503, "message": "overloaded (emulated)"}, status=503)
        return await super()._handle(request)


@dataclass
class Story:
    """What the shared run left behind."""

    prometheus: Prometheus
    start: float
    end: float
    trainer_metrics: str = ""
    operator_metrics: str = ""
    target_health: dict[str, str] = field(default_factory=dict)
    final_status: dict[str, Any] = field(default_factory=dict)


def fill_variables(expr: str, story: Story) -> str:
    """The query Grafana sends with namespace=default and job=promjob selected."""
    window = f"{max(int(story.end - story.start), 10)}s"
    substitutions = {"$namespace": NAMESPACE, "$job": JOB, "$__rate_interval": RATE_INTERVAL, "$__range": window}
    for variable, value in substitutions.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr}"
    return expr


def has_data(story: Story, expr: str) -> bool:
    result = story.prometheus.query_range(fill_variables(expr, story), story.start, time.time())
    return any(series["values"] for series in result)


def _start_trainer(directory: Path, model: Path, port: int) -> tuple[Any, Path, Path]:
    train, validation = tiny.write_dataset(directory / "data", "prompt-completion", train=64, validation=16)
    overrides = {
        "hyperparameters": {"maxSteps": 16},
        "evaluation": {"everySteps": 4},
        "checkpointing": {"everySteps": 8, "keep": 1},
    }
    manifest = tiny.write_manifest(directory / "job.yaml", model, train, validation, overrides, name=JOB)
    workdir = directory / "run"
    argv = launch.command(manifest, workdir, metrics_port=port, extra=("--metrics-linger-seconds", "180"))
    process, log = launch.start(argv, workdir, launch.environment())
    return process, log, workdir


async def _operator_story(cluster: Cluster, trainer_done: Any, termination_message: Any) -> dict[str, Any]:
    """Launch, fail the first gang (exit 1: retryable), run the second to the real trainer's success."""
    await cluster.create_job(a_cpu_gang(JOB, workers=1).build())
    first = await eventually_async(lambda: cluster.pods(JOB, attempt=1), timeout=30)
    await cluster.kubelet_run(first[0]["metadata"]["name"])
    await eventually_async(lambda: cluster.status(JOB).get("phase") == "Running", timeout=30)
    await cluster.kubelet_exit(first[0]["metadata"]["name"], 1, "RuntimeError: emulated crash")
    second = await eventually_async(lambda: cluster.pods(JOB, attempt=2), timeout=30)
    await cluster.kubelet_run(second[0]["metadata"]["name"])
    await eventually_async(trainer_done, timeout=launch.RUN_TIMEOUT, interval=0.5)
    await cluster.kubelet_exit(second[0]["metadata"]["name"], 0, termination_message())
    status: dict[str, Any] = await eventually_async(
        lambda: cluster.status(JOB).get("phase") == "Succeeded" and cluster.status(JOB), timeout=30
    )
    return status


async def _await_scraped(story: Story) -> None:
    """Until Prometheus holds a sample for every CPU panel query (the last scrapes may lag a second)."""
    cpu_queries = [expr for _, expr in QUERIES if not GPU_METRICS & set(re.findall(r"kubetune_\w+", expr))]
    with contextlib.suppress(AssertionError):  # the per-panel tests then name the queries without data
        await eventually_async(lambda: all(has_data(story, expr) for expr in cpu_queries), timeout=30, interval=1.0)


async def _tell_story(directory: Path, model: Path, prometheus: Prometheus, ports: dict[str, int]) -> Story:
    process, log, workdir = _start_trainer(directory / "trainer", model, ports["trainer"])
    story = Story(prometheus, start=time.time(), end=0.0)
    # The operator's metrics live in one registry per process: jobs earlier tests failed in this process
    # would stand in its counters (a fresh operator starts with none) and fire KubetuneJobFailed here.
    for labelled in (
        operator_metrics.JOBS,
        operator_metrics.RESTARTS,
        operator_metrics.FINISHED,
        operator_metrics.API_ERRORS,
    ):
        labelled.clear()
    try:
        cluster = Cluster(fast_settings(metrics_port=ports["operator"], progress_port=ports["trainer"]))
        cluster.server = FlakyApiServer()
        declare_resources(cluster.server)
        async with cluster:

            def trainer_done() -> bool:
                if process.poll() is not None and not (workdir / "result.json").exists():
                    raise AssertionError(f"trainer exited with {process.returncode}:\n{log.read_text()[-6000:]}")
                return (workdir / "result.json").exists()

            story.final_status = await _operator_story(
                cluster, trainer_done, lambda: (workdir / "termination-log").read_text()
            )
            story.end = time.time()
            await _await_scraped(story)
            story.trainer_metrics = get(f"http://127.0.0.1:{ports['trainer']}/metrics").decode()
            story.operator_metrics = get(f"http://127.0.0.1:{ports['operator']}/metrics").decode()
            story.target_health = prometheus.targets_health()
        story.end = time.time()
    finally:
        launch.kill_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            launch.kill_group(process)
    return story


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    directory = tmp_path_factory.mktemp("prometheus-story")
    model = tiny.tiny_model_dir(tmp_path_factory)
    ports = {"trainer": free_port(), "operator": free_port()}
    rules = directory / "rules.yaml"
    rules.write_text(render_rule_file())
    prometheus = Prometheus(
        directory / "prometheus",
        {"trainer": f"127.0.0.1:{ports['trainer']}", "operator": f"127.0.0.1:{ports['operator']}"},
        rules,
    )
    prometheus.start()
    try:
        yield asyncio.run(_tell_story(directory, model, prometheus, ports))
    finally:
        prometheus.stop()


def test_the_story_happened(story: Story) -> None:
    """The run the other tests query: both targets scraped, a restart, a success."""
    assert story.target_health == {"trainer": "up", "operator": "up"}
    assert story.final_status["restarts"] == 1
    assert story.final_status["phase"] == "Succeeded"


@pytest.mark.parametrize(("title", "expr"), QUERIES, ids=[f"{t}:{i}" for i, (t, _) in enumerate(QUERIES)])
def test_every_dashboard_query_returns_data(story: Story, title: str, expr: str) -> None:
    gpu_only = GPU_METRICS & set(re.findall(r"kubetune_\w+", expr))
    if gpu_only:
        # On CPU the trainer publishes no GPU series at all ("No data" in Grafana, not a misleading 0).
        assert not has_data(story, expr)
        assert not any(f"\n{name}{{" in story.trainer_metrics for name in gpu_only)
        pytest.skip(f"{title}: {sorted(gpu_only)} are published on GPUs only; this run is on CPU")
    dpo_only = DPO_METRICS & set(re.findall(r"kubetune_\w+", expr))
    if dpo_only:
        # A supervised job publishes no reward series at all ("No data", not a misleading 0).
        assert not has_data(story, expr)
        assert not any(f"\n{name}{{" in story.trainer_metrics for name in dpo_only)
        pytest.skip(f"{title}: {sorted(dpo_only)} are published by DPO jobs only; this job is supervised")
    assert has_data(story, expr), f"panel {title!r}: no data for {fill_variables(expr, story)}"


def test_dashboard_variables_list_the_namespace_and_the_job(story: Story) -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    namespace_match = re.fullmatch(r"label_values\((.+), namespace\)", variables["namespace"]["query"])
    job_match = re.fullmatch(r"label_values\((.+), finetunejob\)", variables["job"]["query"])
    assert namespace_match and job_match
    assert NAMESPACE in story.prometheus.label_values("namespace", namespace_match[1])
    job_selector = job_match[1].replace("$namespace", NAMESPACE)
    assert story.prometheus.label_values("finetunejob", job_selector) == [JOB]


@pytest.mark.parametrize("source", ["trainer", "operator"])
def test_promtool_check_metrics_finds_no_naming_problems(story: Story, source: str) -> None:
    text = story.trainer_metrics if source == "trainer" else story.operator_metrics
    assert text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def _exposed_types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


@pytest.mark.parametrize("source", ["trainer", "operator"])
def test_exposition_matches_the_catalogue(story: Story, source: str) -> None:
    """Every catalogued metric is published with its type and labels, and nothing uncatalogued is."""
    text = story.trainer_metrics if source == "trainer" else story.operator_metrics
    catalogue: tuple[Metric, ...] = TRAINER_METRICS if source == "trainer" else OPERATOR_METRICS
    types = _exposed_types(text)
    for metric in catalogue:
        if metric.gpu_only or metric.dpo_only:
            continue
        assert types.get(metric.name) == metric.type, (metric.name, types.get(metric.name))
        sample = re.search(rf"^{metric.name}(?:_bucket|_count)?\{{([^}}]*)\}}", text, re.M)
        assert sample or not metric.labels, f"{metric.name} has no sample"
        if sample:
            labels = {pair.split("=", 1)[0] for pair in sample[1].split(",") if pair} - {"le"}
            assert labels == set(metric.labels), (metric.name, labels)
    # prometheus-client adds a `<counter>_created` timestamp family per counter and histogram.
    published = {name for name in types if name.startswith("kubetune_") and not name.endswith("_created")}
    assert published <= {m.name for m in catalogue}, (
        f"not catalogued: {sorted(published - {m.name for m in catalogue})}"
    )


def test_alert_rules_load_and_stay_quiet_on_a_healthy_run(story: Story) -> None:
    health = story.prometheus.rule_health()
    assert health and all(state == "ok" for _, state in health), health
    assert story.prometheus.firing_alerts() == []
