"""Each attempt's NetworkPolicy, enforced on the real node (issue 26, item 4): while a gang trains, a pod
of another namespace cannot open a connection to its rendezvous store (29500, no authentication) or to
rank 0's endpoints (9400), nor can a pod of the job's own namespace labelled as another job's trainer or
as another attempt of the job, while the gang's own traffic and the in-cluster operator's reads of rank 0
pass. kube-network-policies enforces it (tests/support/netpolicy_agent.py, started with the node; its log
is kept with the node's when a test fails).

The outsider's probe also opens a connection to a pod no policy selects (the operator's health port): it
must succeed, so a probe that cannot connect at all fails the test instead of passing it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.operator.builders import ATTEMPT_LABEL, JOB_LABEL
from tests.e2e.realnode.cluster import operator_pod, restricted_namespace
from tests.e2e.realnode.jobs import UNTIL_STOPPED, Inputs, a_real_job
from tests.support.kubeapi import KubeApi
from tests.support.realnode import RealNode
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(420)

POLICIES = "networking.k8s.io/v1/networkpolicies"
OPERATOR_IMAGE = "ghcr.io/kubetune/operator:0.1.0"
#: Seconds a probe's connection may take: a dropped SYN is resent after 1 and 3 s, then it gives up.
CONNECT_TIMEOUT = 6
PROBE = """
import json, socket, sys
outcomes = {}
for host, port in json.loads(sys.argv[1]):
    conn = socket.socket()
    conn.settimeout(float(sys.argv[2]))
    try:
        conn.connect((host, port))
        outcome = "open"
    except socket.timeout:
        outcome = "timed out"
    except OSError as error:
        outcome = error.strerror or str(error)
    finally:
        conn.close()
    outcomes[f"{host}:{port}"] = outcome
print(json.dumps(outcomes))
"""


def probe_pod(
    targets: list[tuple[str, int]], name: str = "probe", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod that tries to connect to each target once, and prints what happened (restricted-compliant)."""
    container = {
        "name": "probe",
        "image": OPERATOR_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", PROBE, json.dumps(targets), str(CONNECT_TIMEOUT)],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    security = {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    spec = {"restartPolicy": "Never", "securityContext": security, "containers": [container]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def probe_from(
    admin: KubeApi,
    node: RealNode,
    namespace: str,
    targets: list[tuple[str, int]],
    name: str = "probe",
    labels: dict[str, str] | None = None,
) -> dict[str, str]:
    """Run a probe pod `name` with `labels` in `namespace` (made, restricted, unless it exists); its outcomes."""
    if admin.get("v1/namespaces", None, namespace) is None:
        restricted_namespace(admin, namespace)
    code, body = admin.create("v1/pods", namespace, probe_pod(targets, name, labels))
    assert code < 300, body

    def ended() -> dict[str, Any] | None:
        pod = admin.get("v1/pods", namespace, name) or {}
        return pod if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    pod = eventually(ended, 120, message=f"the probe pod {name} to finish")
    log = node.control_plane.kubectl("logs", "-n", namespace, name).stdout
    assert pod["status"]["phase"] == "Succeeded", f"{pod['status']}\n{log}"
    outcomes: dict[str, str] = json.loads(log.strip().splitlines()[-1])
    return outcomes


def test_a_pod_of_another_namespace_cannot_reach_a_training_gang(
    submit: Any, inputs: Inputs, real_node: RealNode, admin: KubeApi
) -> None:
    namespace = "rn-netpol"
    job = submit(namespace, a_real_job("tiny", inputs).spec(UNTIL_STOPPED))
    pods = eventually(lambda: job.running(1), 240, message="both workers running")
    policy = admin.get(POLICIES, namespace, "tiny-a1")
    assert policy is not None, "the operator made no NetworkPolicy for attempt 1"
    # the gang found itself (rendezvous and gloo through the policy) and the operator read rank 0 (9400)
    step = eventually(lambda: (job.status().get("progress") or {}).get("step", 0), 240, message="progress read")
    worker0 = next(p for p in pods if p["metadata"]["name"].endswith("-w0"))["status"]["podIP"]
    operator = operator_pod(admin)["status"]["podIP"]
    outcomes = probe_from(admin, real_node, "rn-outsider", [(worker0, 29500), (worker0, 9400), (operator, 8081)])
    assert outcomes == {
        f"{worker0}:29500": "timed out",
        f"{worker0}:9400": "timed out",
        f"{operator}:8081": "open",  # the probe itself works: a pod no policy selects answers
    }, outcomes
    # in the job's own namespace, a pod labelled as another job's trainer, or as another attempt of this
    # job (a fenced gang on a cut-off node), reaches neither port either
    trainer = {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/component": "trainer"}
    for name, labels in (
        ("other-job", {**trainer, JOB_LABEL: "other", ATTEMPT_LABEL: "1"}),
        ("other-attempt", {**trainer, JOB_LABEL: "tiny", ATTEMPT_LABEL: "2"}),
    ):
        outcomes = probe_from(admin, real_node, namespace, [(worker0, 29500), (worker0, 9400)], name, labels)
        assert set(outcomes.values()) == {"timed out"}, (name, outcomes)
    # and the gang trains on, its progress still read by the operator through the policy
    eventually(lambda: (job.status().get("progress") or {}).get("step", 0) > step, 120, message="more steps")
    assert job.status()["attempt"] == 1 and job.status().get("restarts", 0) == 0, job.status()
    real_node.check_contained()
