"""Level-triggered and idempotent: operator restarts, neighbouring jobs, RBAC coverage, metrics and
the `kubetune operator` command itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import kmock
import pytest

from kubetune.operator.rbac import ALL_RULES
from tests.support.apiserver import Cluster, fast_settings, write_kubeconfig
from tests.support.builders import a_cpu_gang
from tests.support.ports import free_port
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.timeout(60)


def names(pods: list[dict[str, Any]]) -> list[str]:
    return [pod["metadata"]["name"] for pod in pods]


def pod_creations(cluster: Cluster) -> int:
    return sum(1 for r in cluster.requests() if r.method == "POST" and r.resource == kmock.resource("v1/pods"))


async def test_an_operator_restarted_mid_job_neither_duplicates_the_gang_nor_loses_the_job() -> None:
    async with Cluster() as cluster:
        await cluster.create_job(a_cpu_gang("demo").build())
        pods = names(await eventually_async(lambda: len(cluster.pods("demo")) == 2 and cluster.pods("demo")))
        await cluster.stop_operator()
        for pod in pods:  # the gang starts while no operator runs
            await cluster.kubelet_run(pod)
        created = pod_creations(cluster)
        await cluster.start_operator()
        await eventually_async(lambda: cluster.status("demo").get("phase") == "Running")
        await cluster.reconciled("demo", times=2)
        assert pod_creations(cluster) == created and names(cluster.pods("demo")) == pods

        await cluster.kubelet_exit(pods[0], 1, "crash")
        await eventually_async(
            lambda: (
                cluster.status("demo").get("phase") in ("Restarting", "Pending")
                and cluster.status("demo")["restarts"] == 1
            )
        )
        await cluster.restart_operator()  # restarted while restarting the gang
        new = await eventually_async(
            lambda: len(cluster.pods("demo", attempt=2)) == 2 and cluster.pods("demo", attempt=2)
        )
        await cluster.reconciled("demo", times=2)
        status = cluster.status("demo")
        assert (status["attempt"], status["restarts"]) == (2, 1)  # the failure was counted once
        assert names(cluster.pods("demo")) == names(new) == ["demo-a2-w0", "demo-a2-w1"]
        assert pod_creations(cluster) == created + 2


async def test_two_jobs_never_touch_each_others_pods() -> None:
    async with Cluster() as cluster:
        await cluster.create_job(a_cpu_gang("alpha").build())
        await cluster.create_job(a_cpu_gang("alphabet").build())  # a name with the other's as prefix
        await eventually_async(lambda: len(cluster.pods("alpha")) == 2 and len(cluster.pods("alphabet")) == 2)
        for pod in names(cluster.pods("alpha")):
            await cluster.kubelet_run(pod)
        await cluster.kubelet_exit("alpha-a1-w0", 3, "bad data")
        await eventually_async(lambda: cluster.status("alpha").get("phase") == "Failed")
        await cluster.reconciled("alpha", times=2)  # the failed job's clean-up, and more
        await cluster.reconciled("alphabet", times=2)
        assert names(cluster.pods("alphabet")) == ["alphabet-a1-w0", "alphabet-a1-w1"]
        assert cluster.status("alphabet")["phase"] == "Pending" and cluster.status("alphabet")["restarts"] == 0


async def test_every_request_the_operator_makes_is_granted_by_the_rbac_rules() -> None:
    async with Cluster() as cluster:
        await cluster.create_job(a_cpu_gang("demo").build())
        pods = names(await eventually_async(lambda: len(cluster.pods("demo")) == 2 and cluster.pods("demo")))
        for pod in pods:
            await cluster.kubelet_run(pod)
        await cluster.kubelet_exit(pods[0], 1)
        await eventually_async(lambda: len(cluster.pods("demo", attempt=2)) == 2)
        await cluster.delete_job("demo")
        await eventually_async(lambda: cluster.get("kubetune.io/v1alpha1/finetunejobs", "demo") is None)
    granted = {
        (group, resource, verb)
        for rule in ALL_RULES
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }
    used = set()
    for request in cluster.requests():
        if request.resource is None or request.action is None or request.resource.plural is None:
            continue
        agent = request.headers.get("User-Agent", "")
        if "kmock" in agent or agent.startswith("Python/"):  # the test's own calls
            continue
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        verb = {
            "list": "list",
            "watch": "watch",
            "fetch": "get",
            "create": "create",
            "update": "patch",
            "delete": "delete",
        }[str(request.action.value if hasattr(request.action, "value") else request.action).lower()]
        used.add((request.resource.group or "", resource, verb))
    assert used, "no operator request was recorded"
    assert used <= granted, sorted(used - granted)


async def test_operator_metrics_are_served_and_api_errors_are_retried() -> None:
    port = free_port()
    # Metrics are process-wide (one operator per process in production): a namespace of its own keeps
    # this test's gauge apart from other tests' jobs.
    async with Cluster(fast_settings(metrics_port=port), namespace="metrics-test") as cluster:
        # The API server answers the first two pod creations 503 (after storing them, as a server that
        # fails late does): the client retries, and "already exists" on the retry is success.
        cluster.server["post", kmock.resource("v1/pods")][:2] << 503
        await cluster.create_job(a_cpu_gang("demo").retry(max_restarts=1).build())
        pods = names(await eventually_async(lambda: len(cluster.pods("demo")) == 2 and cluster.pods("demo")))
        await cluster.kubelet_exit(pods[0], 1, "crash")
        pods = names(await eventually_async(lambda: len(cluster.pods("demo", attempt=2)) == 2 and cluster.pods("demo")))
        await cluster.kubelet_exit(pods[0], 2, "bad config")
        await eventually_async(lambda: cluster.status("demo").get("phase") == "Failed")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text: str = response.read().decode()
                return text

        text = await eventually_async(
            lambda: 'kubetune_jobs{namespace="metrics-test",phase="Failed"} 1.0' in (t := scrape()) and t
        )
        assert 'kubetune_jobs{namespace="metrics-test",phase="Running"} 0.0' in text
        assert 'kubetune_job_restarts_total{namespace="metrics-test"} 1.0' in text
        assert 'kubetune_api_errors_total{code="503",verb="create_pod"}' in text
        assert "kubetune_reconcile_duration_seconds_count" in text
        assert 'kubetune_jobs_finished_total{result="Failed"}' in text


@pytest.mark.timeout(90)
async def test_the_kubetune_operator_command_runs_against_a_kubeconfig(tmp_path: Path) -> None:
    """`kubetune operator` as its own process: standard KUBECONFIG authentication, health endpoint.
    (Cluster-wide: with `--namespace`, kopf lists /api/v1/namespaces, a path kmock 0.8 cannot parse.)"""
    async with Cluster(start_operator=False) as cluster:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", cluster.url)
        health, metrics_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBETUNE_TRAINER_IMAGE": "example/trainer:1"}
        command = [
            sys.executable,
            "-m",
            "kubetune.cli",
            "operator",
            "--all-namespaces",
            f"--health-port={health}",
            f"--metrics-port={metrics_port}",
        ]
        log = tmp_path / "operator.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            await cluster.create_job(a_cpu_gang("cli").build())
            pods = await eventually_async(lambda: len(cluster.pods("cli")) == 2 and cluster.pods("cli"), timeout=30)
            assert pods[0]["spec"]["containers"][0]["image"] == "example/trainer:1"

            def healthy() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as response:
                    return response.status == 200

            await eventually_async(lambda: _quietly(healthy), timeout=10)
        except AssertionError as error:
            raise AssertionError(f"{error}\noperator log:\n{log.read_text()[-3000:]}") from None
        finally:
            process.terminate()  # SIGTERM, as Kubernetes stops a pod
            try:
                await asyncio.to_thread(process.wait, 30)  # the emulator must keep serving meanwhile
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.returncode == 0, log.read_text()[-3000:]


def _quietly(check: Any) -> bool:
    try:
        return bool(check())
    except OSError:
        return False
