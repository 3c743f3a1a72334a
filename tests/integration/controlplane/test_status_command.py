"""`kubetune status` against a real API server (tests/support/controlplane.py), as a user runs it: a
process with a kubeconfig (TLS, bearer token, RBAC).

- a running job whose status was written through the status subresource, with its events: the report,
  exit 0, the namespace taken from the kubeconfig's context;
- a job that does not exist: exit 1 and what to check;
- a user whom RBAC lets read nothing: exit 1 and the 403 said as what to ask for; a user who may read
  FineTuneJobs but not events: the report, with a note where the events would be;
- `-w`: follows until the job has finished.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.builders import a_job
from tests.support.controlplane import ADMIN_TOKEN, ControlPlane, kubeconfig
from tests.support.kubeapi import KubeApi
from tests.support.statuses import finished_status, job_event, restart_event, running_status

pytestmark = pytest.mark.timeout(120)

JOBS = "kubetune.io/v1alpha1/finetunejobs"
NAMESPACE = "status-team"


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> KubeApi:
    api = KubeApi(control_plane.url, ADMIN_TOKEN, control_plane.ca_file)
    code, body = api.create("v1/namespaces", None, {"metadata": {"name": NAMESPACE}})
    assert code < 300 or code == 409, body
    return api


def create_job(admin: KubeApi, name: str, status: dict[str, Any]) -> dict[str, Any]:
    code, job = admin.create(JOBS, NAMESPACE, a_job(name).build())
    assert code == 201, job
    set_status(admin, name, status)
    return job


def set_status(admin: KubeApi, name: str, status: dict[str, Any]) -> None:
    code, body = admin.patch(JOBS, NAMESPACE, name, {"status": status}, "status")
    assert code == 200, body


def post_event(admin: KubeApi, event: dict[str, Any]) -> None:
    code, body = admin.create("v1/events", NAMESPACE, event)
    assert code == 201, body


def write_kubeconfig(path: Path, plane: ControlPlane, token: str) -> Path:
    """A kubeconfig whose current context points at NAMESPACE, as `kubectl config set-context` writes it."""
    path.write_text(yaml.safe_dump(kubeconfig(plane.url, plane.ca_file, token, NAMESPACE)))
    return path


def kubetune(kubeconfig_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig_file)}
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def token_for(plane: ControlPlane, admin: KubeApi, account: str, rules: list[dict[str, Any]]) -> str:
    """The token of a new ServiceAccount in NAMESPACE that RBAC allows `rules` (none: nothing at all)."""
    code, body = admin.create("v1/serviceaccounts", NAMESPACE, {"metadata": {"name": account}})
    assert code == 201, body
    if rules:
        role = {"metadata": {"name": account}, "rules": rules}
        binding = {
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
        }
        for resource, body in (("roles", role), ("rolebindings", binding)):
            code, answer = admin.create(f"rbac.authorization.k8s.io/v1/{resource}", NAMESPACE, body)
            assert code == 201, answer
    done = plane.kubectl("create", "token", account, "-n", NAMESPACE)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def running_job(admin: KubeApi) -> Iterator[dict[str, Any]]:
    job = create_job(admin, "support-triage", running_status())
    post_event(admin, job_event(job, "Normal", "GangCreated", "attempt 1: 2 worker(s) created", 600))
    post_event(admin, restart_event(job, 300))
    post_event(admin, job_event(job, "Normal", "GangCreated", "attempt 2: 2 worker(s) created", 290))
    post_event(admin, job_event(job, "Normal", "WorkersRunning", "attempt 2: 2 worker(s) training", 240))
    yield job


def test_a_running_job_on_a_real_api_server(
    control_plane: ControlPlane, admin: KubeApi, running_job: dict[str, Any], tmp_path: Path
) -> None:
    done = kubetune(write_kubeconfig(tmp_path / "kubeconfig", control_plane, ADMIN_TOKEN), "status", "support-triage")
    print(done.stdout)  # the report as users see it (pytest -s shows it)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    for words in (
        "FineTuneJob status-team/support-triage: Running",
        "Phase:          Running (WorkersRunning): attempt 2: 2 worker(s) training",
        "Progress:       step 12 of 40 (30%), epoch 0.60, ETA 2m10s",
        "Latest losses:  train 1.25, eval 1.1, best eval 1.05 at step 10",
        "Restarts:       1 (attempt 2); OutOfMemory (5m ago)",
        "| Restarting | False  | WorkersRunning |",
        "| Warning | OutOfMemory    | worker 1 of attempt 1 ran out of memory (exit 137); restarting the gang",
        "| Normal  | WorkersRunning | attempt 2: 2 worker(s) training",
    ):
        assert words in done.stdout, done.stdout


def test_a_job_that_does_not_exist(control_plane: ControlPlane, admin: KubeApi, tmp_path: Path) -> None:
    done = kubetune(write_kubeconfig(tmp_path / "kubeconfig", control_plane, ADMIN_TOKEN), "status", "nothing-here")
    assert (done.returncode, done.stdout) == (1, "")
    assert "FineTuneJob nothing-here not found in namespace status-team (the current context's)" in done.stderr
    assert "kubectl get ftj -A" in done.stderr and "Traceback" not in done.stderr
    other = kubetune(write_kubeconfig(tmp_path / "kubeconfig", control_plane, ADMIN_TOKEN), "status", "x", "-n", "nope")
    assert other.returncode == 1 and "not found in namespace nope: check" in other.stderr, other.stderr


def test_rbac_refusals_are_said_as_what_to_ask_for(
    control_plane: ControlPlane, admin: KubeApi, running_job: dict[str, Any], tmp_path: Path
) -> None:
    nobody = write_kubeconfig(tmp_path / "nobody", control_plane, token_for(control_plane, admin, "nobody", []))
    done = kubetune(nobody, "status", "support-triage")
    assert (done.returncode, done.stdout) == (1, ""), done.stdout
    assert "you may not read FineTuneJobs in namespace status-team (403 Forbidden: " in done.stderr, done.stderr
    assert "`kubectl auth can-i get finetunejobs.kubetune.io -n status-team`" in done.stderr
    assert "Traceback" not in done.stderr

    jobs_only = [{"apiGroups": ["kubetune.io"], "resources": ["finetunejobs"], "verbs": ["get"]}]
    reader = write_kubeconfig(tmp_path / "reader", control_plane, token_for(control_plane, admin, "reader", jobs_only))
    done = kubetune(reader, "status", "support-triage")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "FineTuneJob status-team/support-triage: Running" in done.stdout
    assert (
        "the events are not readable (403 Forbidden): ask for `list` on events in namespace status-team" in done.stdout
    )


def test_watch_follows_until_the_job_has_finished(control_plane: ControlPlane, admin: KubeApi, tmp_path: Path) -> None:
    create_job(admin, "followed", running_status(step=12, train_loss=2.0))
    env = {**os.environ, "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", control_plane, ADMIN_TOKEN))}
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune.cli", "status", "followed", "-w", "--interval", "0.3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        while "following until the job finishes" not in process.stdout.readline():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
        set_status(admin, "followed", running_status(step=30, train_loss=1.0))
        time.sleep(1.5)
        set_status(admin, "followed", finished_status())
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert "Running | step 30/40 (75%) | train loss 1 |" in out, out
    assert "FineTuneJob status-team/followed: Succeeded" in out and "Model:          /models/demo" in out
    assert "train loss  █▁  2 -> 0.3" in out or "train loss  █▄▁  2 -> 0.3" in out, out
