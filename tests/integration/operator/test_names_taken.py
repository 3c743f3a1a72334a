"""A child's name already taken (kubetune.operator.owners): the operator clears a deleted namesake job's
leftover and never deletes an object that is someone's own, which a job's author could otherwise have the
operator delete for them by naming a job after it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apiserver import Cluster
from tests.support.builders import a_cpu_gang
from tests.support.waiting import eventually_async

pytestmark = pytest.mark.timeout(60)


def service(name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "default"}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    spec = {"clusterIP": "None", "selector": {"app": name}, "ports": [{"name": "web", "port": 80}]}
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


async def test_a_users_own_service_named_as_the_job_is_never_deleted_and_the_job_says_why() -> None:
    async with Cluster() as cluster:
        await cluster.request("POST", cluster._path("v1/services"), service("demo", None))
        await cluster.create_job(a_cpu_gang("demo").build())
        status = await eventually_async(
            lambda: cluster.status("demo").get("phase") == "Failed" and cluster.status("demo")
        )
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert failed["reason"] == "NameTaken", status
        assert "service default/demo" in failed["message"] and "rename the job" in failed["message"], failed
        await cluster.reconciled("demo", times=2)
        kept = cluster.get("v1/services", "demo")
        assert kept is not None and kept["spec"]["selector"] == {"app": "demo"}, kept
        assert "ownerReferences" not in kept["metadata"]
        assert cluster.pods("demo") == []


async def test_a_deleted_namesake_jobs_leftover_service_is_cleared_and_the_job_runs() -> None:
    async with Cluster() as cluster:
        leftover = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "demo",
                    "uid": "0000-deleted-job", "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        await cluster.request("POST", cluster._path("v1/services"), service("demo", leftover))
        await cluster.create_job(a_cpu_gang("demo").build())
        await eventually_async(lambda: len(cluster.pods("demo")) == 2)
        uid = cluster.job("demo")["metadata"]["uid"]
        replaced = cluster.get("v1/services", "demo")
        assert replaced is not None and [r["uid"] for r in replaced["metadata"]["ownerReferences"]] == [uid]
