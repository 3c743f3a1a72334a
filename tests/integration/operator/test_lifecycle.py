"""The real operator (kopf, handlers, reconciler, client) against the emulated API server, driven by
patching pod statuses as a kubelet would. Each test is one story of a job's life."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from kubetune.api.outcome import ProgressSnapshot, TrainerResult
from kubetune.api.status import Metrics, Progress
from kubetune.operator.settings import OperatorSettings
from tests.support.apiserver import Cluster, fast_settings
from tests.support.builders import JobBuilder, a_cpu_gang
from tests.support.operator_helpers import FakeRankZero
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.timeout(60)


def names(pods: list[dict[str, Any]]) -> list[str]:
    return [pod["metadata"]["name"] for pod in pods]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def result(outcome: str, reason: str, message: str, retryable: bool = False, **kw: Any) -> str:
    return TrainerResult(
        outcome=outcome, reason=reason, message=message, retryable=retryable, **kw
    ).termination_message()  # type: ignore[arg-type]


async def launched(cluster: Cluster, job: JobBuilder | None = None, running: bool = True) -> list[str]:
    """Create the job (default: `a_cpu_gang()`) and wait for its gang; `running`: and run it."""
    job = job or a_cpu_gang()
    name, workers = job.name, job.build()["spec"]["distributed"]["workers"]
    await cluster.create_job(job.build())
    pods = names(await eventually_async(lambda: len(cluster.pods(name)) == workers and cluster.pods(name)))
    if running:
        for pod in pods:
            await cluster.kubelet_run(pod)
        await eventually_async(lambda: cluster.status(name).get("phase") == "Running")
    return pods


async def test_launch_creates_service_configmap_and_a_labelled_gang_then_runs_and_reports_progress(
    rank_zero: FakeRankZero,
) -> None:
    async with Cluster(fast_settings(progress_port=rank_zero.port)) as cluster:
        pods = await launched(cluster, running=False)
        assert pods == ["demo-a1-w0", "demo-a1-w1"]
        job = cluster.job("demo")
        uid = job["metadata"]["uid"]
        for pod in cluster.pods("demo"):
            labels = pod["metadata"]["labels"]
            assert labels["kubetune.io/job-name"] == "demo" and labels["kubetune.io/attempt"] == "1"
            assert pod["metadata"]["ownerReferences"][0]["uid"] == uid
        assert [
            labels["kubetune.io/worker-index"] for labels in (p["metadata"]["labels"] for p in cluster.pods("demo"))
        ] == ["0", "1"]
        assert cluster.get("v1/services", "demo")["spec"]["clusterIP"] == "None"  # type: ignore[index]
        configmap = cluster.get("v1/configmaps", "demo-config")
        assert configmap is not None and "/mnt/pvc/data/train.jsonl" in configmap["data"]["job.yaml"]
        assert cluster.status("demo")["phase"] == "Pending"

        rank_zero.snapshot = ProgressSnapshot(
            attempt=1,
            progress=Progress(step=5, total_steps=20, percent=25),
            metrics=Metrics(train_loss=2.5),
            updated_at=0,
        )
        for pod in pods:
            await cluster.kubelet_run(pod)
        status = await eventually_async(
            lambda: cluster.status("demo").get("progress", {}).get("percent") == 25 and cluster.status("demo")
        )
        assert status["phase"] == "Running" and status["metrics"]["trainLoss"] == 2.5
        assert condition(status, "Running")["status"] == "True"
        reasons = [event["reason"] for event in cluster.events("demo")]
        assert "GangCreated" in reasons and "WorkersRunning" in reasons


async def test_success_reports_completion_and_the_trainers_result() -> None:
    async with Cluster() as cluster:
        pods = await launched(cluster)
        done = result(
            "Succeeded",
            "Succeeded",
            "trained 40 steps",
            step=40,
            total_steps=40,
            output_path="/mnt/pvc/ckpt/demo/output",
        )
        await cluster.kubelet_exit(pods[1], 0)
        await cluster.kubelet_exit(pods[0], 0, done)
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Succeeded" and cluster.status("demo")
        )
        assert status["completionTime"] and status["progress"]["percent"] == 100
        assert status["output"]["path"] == "/mnt/pvc/ckpt/demo/output"
        assert condition(status, "Succeeded")["reason"] == "TrainingCompleted"
        assert len(cluster.pods("demo")) == 2  # finished pods are kept for their logs


async def test_a_confirmation_rank_0_did_not_acknowledge_is_sent_again_soon(rank_zero: FakeRankZero) -> None:
    # a finished job is looked at every 60 s here: the second confirmation must not wait for that
    async with Cluster(fast_settings(progress_port=rank_zero.port, finished_interval=60.0)) as cluster:
        pods = await launched(cluster)
        await cluster.kubelet_exit(pods[1], 0)
        rank_zero.result = TrainerResult(
            outcome="Succeeded",
            reason="Succeeded",
            message="trained 40 steps",
            retryable=False,
            step=40,
            total_steps=40,
        )
        rank_zero.refuse_confirms_for = 2.0  # the confirmations right after the status write are all refused
        rank_zero.snapshot = ProgressSnapshot(
            attempt=1,
            progress=Progress(step=40, total_steps=40, percent=100),
            metrics=Metrics(train_loss=1.5),
            updated_at=0,
            result_ready=True,
        )
        await eventually_async(lambda: cluster.status("demo").get("phase") == "Succeeded")
        await eventually_async(lambda: rank_zero.confirmed, timeout=20, message="rank 0 to be told again")
        assert len(rank_zero.confirm_attempts) >= 2  # refused, then told again (not a minute later)
        assert cluster.status("demo")["progress"]["step"] == 40


async def test_early_stop_succeeds_with_the_early_stopped_condition() -> None:
    async with Cluster() as cluster:
        pods = await launched(cluster)
        stopped = result("EarlyStopped", "EarlyStopped", "evalLoss did not improve for 3 evaluations", best_step=30)
        await cluster.kubelet_exit(pods[0], 0, stopped)
        await cluster.kubelet_exit(pods[1], 0)
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Succeeded" and cluster.status("demo")
        )
        assert condition(status, "EarlyStopped")["message"] == "evalLoss did not improve for 3 evaluations"
        assert condition(status, "Succeeded")["reason"] == "EarlyStopped"


async def test_retryable_failure_removes_the_gang_before_attempt_2_which_counts_a_restart() -> None:
    async with Cluster(graceful_pod_deletion=True) as cluster:
        pods = await launched(cluster)
        await cluster.kubelet_exit(pods[1], 137, reason="OOMKilled")
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Restarting" and cluster.status("demo")
        )
        assert status["restarts"] == 1 and condition(status, "Restarting")["reason"] == "OutOfMemory"
        assert "memory" in condition(status, "Restarting")["message"]
        # Both pods are being deleted, but not gone: attempt 2 must wait.
        await eventually_async(lambda: all(p["metadata"].get("deletionTimestamp") for p in cluster.pods("demo")))
        assert cluster.pods("demo", attempt=2) == []
        await cluster.kubelet_finish_deletion(pods[0])
        assert cluster.pods("demo", attempt=2) == []
        await cluster.kubelet_finish_deletion(pods[1])
        new = names(
            await eventually_async(
                lambda: len(cluster.pods("demo", attempt=2)) == 2 and cluster.pods("demo", attempt=2)
            )
        )
        assert new == ["demo-a2-w0", "demo-a2-w1"] and cluster.pods("demo") == cluster.pods("demo", attempt=2)
        env = {e["name"]: e.get("value") for e in cluster.pods("demo", attempt=2)[0]["spec"]["containers"][0]["env"]}
        assert env["KUBETUNE_ATTEMPT"] == "2"
        for pod in new:
            await cluster.kubelet_run(pod)
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Running" and cluster.status("demo")
        )
        assert (status["attempt"], status["restarts"]) == (2, 1)
        assert "OutOfMemory" in [event["reason"] for event in cluster.events("demo")]


async def test_disruption_restarts_without_counting() -> None:
    async with Cluster() as cluster:
        pods = await launched(cluster)
        await cluster.kubelet_disrupt(pods[0], reason="EvictionByEvictionAPI")  # (a preemption: Preempted)
        await eventually_async(lambda: len(cluster.pods("demo", attempt=2)) == 2)
        status = cluster.status("demo")
        assert (status["attempt"], status["restarts"]) == (2, 0)
        assert condition(status, "Restarting")["reason"] == "Disrupted"


async def test_permanent_failure_fails_at_once_with_the_trainers_message() -> None:
    async with Cluster() as cluster:
        pods = await launched(cluster)
        await cluster.kubelet_exit(pods[0], 3, result("Failed", "DataError", "train.jsonl:7: not valid JSON"))
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Failed" and cluster.status("demo")
        )
        failed = condition(status, "Failed")
        assert failed["reason"] == "DataError" and "train.jsonl:7: not valid JSON" in failed["message"]
        assert status["restarts"] == 0 and status["completionTime"]
        await eventually_async(lambda: names(cluster.pods("demo")) == [])  # a failed job leaves no pod behind


async def test_max_restarts_exhausted_fails_the_job() -> None:
    async with Cluster() as cluster:
        pods = await launched(cluster, a_cpu_gang().retry(max_restarts=1))
        await cluster.kubelet_exit(pods[0], 1, "Traceback: boom")
        new = names(
            await eventually_async(
                lambda: len(cluster.pods("demo", attempt=2)) == 2 and cluster.pods("demo", attempt=2)
            )
        )
        for pod in new:
            await cluster.kubelet_run(pod)
        await cluster.kubelet_exit(new[1], 7, result("Failed", "PeerLost", "rank 3 vanished", retryable=True))
        # (a peer-lost failure waits for its cause while the peer looks alive: here the peer failed too)
        await cluster.kubelet_exit(new[0], 1, "Traceback: rank 3 died")
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Failed" and cluster.status("demo")
        )
        assert condition(status, "Failed")["reason"] == "MaxRestartsExceeded" and status["restarts"] == 1
        await eventually_async(lambda: cluster.pods("demo") == [])  # all pods gone


async def test_image_pull_beyond_the_startup_deadline_fails() -> None:
    async with Cluster() as cluster:
        pods = await launched(cluster, a_cpu_gang().retry(startup_timeout_seconds=10), running=False)
        long_ago = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=11)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await cluster.kubelet_waiting(pods[1], "ImagePullBackOff", since=long_ago)
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Failed" and cluster.status("demo")
        )
        assert condition(status, "Failed")["reason"] == "ImagePullFailed"
        await eventually_async(lambda: cluster.pods("demo") == [])


async def test_active_deadline_fails_and_removes_the_pods() -> None:
    async with Cluster() as cluster:
        await launched(cluster, a_cpu_gang().spec(active_deadline_seconds=1))
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Failed" and cluster.status("demo"), timeout=10
        )
        assert condition(status, "Failed")["reason"] == "DeadlineExceeded"
        await eventually_async(lambda: cluster.pods("demo") == [])


async def test_suspend_removes_the_gang_and_resume_continues_with_the_next_attempt() -> None:
    async with Cluster() as cluster:
        await launched(cluster)
        await cluster.patch_job("demo", {"spec": {"suspend": True}})
        await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Suspended" and cluster.pods("demo") == []
        )
        assert cluster.get("v1/configmaps", "demo-config") is not None  # the configuration (and PVCs) stay
        await cluster.patch_job("demo", {"spec": {"suspend": False}})
        await eventually_async(lambda: len(cluster.pods("demo", attempt=2)) == 2)
        status = cluster.status("demo")
        assert (status["attempt"], status["restarts"]) == (2, 0)
        assert condition(status, "Suspended")["reason"] == "JobResumed"


async def test_a_queued_job_never_runs_while_the_operator_cannot_queue_it() -> None:
    """The emulator serves no Kueue API, so the operator (`kueue` unset: detected at start) runs without
    its integration: a job naming a queue waits with no pod and says why, even once unsuspended; a job
    without a queue beside it runs."""
    async with Cluster() as cluster:
        await cluster.create_job(a_cpu_gang("queued").suspended().scheduling(queue_name="team-a").build())
        await cluster.create_job(a_cpu_gang("free").build())
        await eventually_async(lambda: len(cluster.pods("free")) == 2)
        status = await eventually_async(
            lambda: cluster.status("queued").get("phase") == "Pending" and cluster.status("queued")
        )
        assert condition(status, "Admitted")["reason"] == "QueueUnavailable"
        assert "LocalQueue team-a" in status["message"] and "never runs unqueued" in status["message"]
        await eventually_async(lambda: [e for e in cluster.events("queued") if e["reason"] == "QueueUnavailable"])
        await cluster.patch_job("queued", {"spec": {"suspend": False}})
        await cluster.reconciled("queued", times=2)  # two more reconciles after the change: still no pod
        assert cluster.pods("queued") == []
        assert condition(cluster.status("queued"), "Admitted")["reason"] == "QueueUnavailable"


async def test_spec_changes_after_start_are_refused() -> None:
    async with Cluster() as cluster:
        await launched(cluster)
        await cluster.patch_job("demo", {"spec": {"distributed": {"workers": 4, "accelerator": "cpu"}}})
        events = await eventually_async(
            lambda: [e for e in cluster.events("demo") if e["reason"] == "SpecChangeRefused"]
        )
        assert "spec.distributed" in events[0]["message"]
        await cluster.kubelet_disrupt("demo-a1-w0")  # the next attempt still has the launched shape
        await eventually_async(lambda: len(cluster.pods("demo", attempt=2)) >= 2)
        await cluster.reconciled("demo", times=2)  # two more reconciles: no third or fourth worker appears
        assert names(cluster.pods("demo", attempt=2)) == ["demo-a2-w0", "demo-a2-w1"]


async def test_a_stored_invalid_job_fails_naming_the_field_and_gets_nothing() -> None:
    """The CRD's schema and CEL refuse these on a real API server; a job stored without that validation
    (an older CRD, one applied without its schema) is re-validated by the operator with the same models."""
    mistakes = {
        "not-a-quantity": ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits.memory"),
        "over-the-limit": ({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "spec.resources"),
        "keyless-equal": ({"scheduling": {"tolerations": [{"operator": "Equal"}]}}, "spec.scheduling.tolerations"),
    }
    async with Cluster() as cluster:
        for name, (mistake, _) in mistakes.items():
            await cluster.create_job(a_cpu_gang(name).spec(mistake).build())
        for name, (_, field) in mistakes.items():
            status = await eventually_async(
                lambda n=name: cluster.status(n).get("phase") == "Failed" and cluster.status(n)
            )
            assert field in status["message"], status
            await eventually_async(lambda n=name: "InvalidSpec" in {e["reason"] for e in cluster.events(n)})
        await launched(cluster, running=False)  # the control row: a valid job created after them gets its gang
        for name in mistakes:
            assert cluster.pods(name) == [] and cluster.get("v1/services", name) is None
            assert cluster.get("v1/configmaps", f"{name}-config") is None


async def test_deleting_a_job_removes_its_children() -> None:
    async with Cluster() as cluster:
        await launched(cluster)
        await cluster.delete_job("demo")
        await eventually_async(lambda: cluster.get("kubetune.io/v1alpha1/finetunejobs", "demo") is None)
        await eventually_async(lambda: cluster.pods("demo") == [] and cluster.get("v1/services", "demo") is None)
        assert cluster.get("v1/configmaps", "demo-config") is None


async def test_ttl_after_finished_deletes_the_job() -> None:
    async with Cluster() as cluster:
        pods = await launched(cluster, a_cpu_gang().spec(ttl_seconds_after_finished=0))
        for pod in pods:
            await cluster.kubelet_exit(pod, 0)
        await eventually_async(lambda: cluster.get("kubetune.io/v1alpha1/finetunejobs", "demo") is None)
        await eventually_async(lambda: cluster.pods("demo") == [])


@pytest.mark.parametrize(
    ("namespace", "settings"),
    [
        ("kube-system", fast_settings()),
        ("kubetune", fast_settings(protected_namespaces=("kube-system", "kube-public", "kube-node-lease", "kubetune"))),
    ],
    ids=["system", "the-operators-own"],
)
async def test_a_job_in_a_protected_namespace_fails_and_gets_nothing(
    namespace: str, settings: OperatorSettings
) -> None:
    """Whatever the operator's RBAC allows there: no pod, Service, ConfigMap or Workload is made."""
    async with Cluster(settings, namespace=namespace) as cluster:
        await cluster.create_job(a_cpu_gang("demo").build())
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Failed" and cluster.status("demo")
        )
        assert condition(status, "Failed")["reason"] == "ProtectedNamespace"
        assert f"namespace {namespace} is protected" in status["message"]
        await cluster.reconciled("demo", times=2)
        assert cluster.pods("demo") == [] and cluster.get("v1/configmaps", "demo-config") is None


async def test_a_second_live_job_in_the_same_checkpoint_folder_is_refused_before_launch() -> None:
    async with Cluster() as cluster:
        await cluster.create_job(a_cpu_gang("first").storage("pvc://ckpt/run").build())
        await eventually_async(lambda: len(cluster.pods("first")) == 2)
        await cluster.create_job(a_cpu_gang("second").storage("pvc://ckpt/run/inside").build())
        status = await eventually_async(
            lambda: cluster.status("second").get("phase") == "Failed" and cluster.status("second")
        )
        assert condition(status, "Failed")["reason"] == "FolderInUse"
        assert "spec.storage.checkpoints pvc://ckpt/run/inside" in status["message"]
        assert "FineTuneJob first" in status["message"]
        assert cluster.pods("second") == [] and "startTime" not in status
        assert len(cluster.pods("first")) == 2  # the first one is untouched


async def test_a_running_job_this_version_refuses_fails_and_its_gang_is_removed() -> None:
    """A spec launched by an older operator under rules it did not have (here: output inside the checkpoints,
    in the launched spec the ConfigMap keeps) fails as InvalidSpec, and its running gang is removed rather
    than left holding its nodes behind a failed job."""
    async with Cluster() as cluster:
        pods = await launched(cluster)
        configmap = cluster.get("v1/configmaps", "demo-config")
        assert configmap is not None
        spec = json.loads(configmap["data"]["launched-spec.json"])
        spec["storage"]["output"] = spec["storage"]["checkpoints"] + "/final"
        patch = {"data": {"launched-spec.json": json.dumps(spec)}}
        await cluster.request("PATCH", cluster._path("v1/configmaps", "demo-config"), patch)
        await cluster.patch_job("demo", {"metadata": {"labels": {"touched": "yes"}}})  # a change: reconcile now
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Failed" and cluster.status("demo")
        )
        assert status["message"].startswith("invalid FineTuneJob: spec") and "storage.output" in status["message"], (
            status
        )
        await eventually_async(
            lambda: (
                all(p["metadata"].get("deletionTimestamp") for p in cluster.pods("demo")) or not cluster.pods("demo")
            )
        )
        assert pods
