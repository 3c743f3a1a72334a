"""Where `kubetune status` finds its kubeconfig, and the sentence it says for each way a read fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

from kubetune.client.cluster import ClusterError, Connection, about, connect, explain

pytestmark = pytest.mark.timeout(20)


def kubeconfig(path: Path, contexts: dict[str, str | None], current: str | None = None) -> Path:
    """A kubeconfig with one cluster and the given contexts ({name: namespace or None})."""
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://k8s.example:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {"name": name, "context": {"cluster": "c", "user": "u"} | ({"namespace": ns} if ns else {})}
            for name, ns in contexts.items()
        ],
    }
    if current:
        document["current-context"] = current
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return tmp_path / "home"


def connected(*args: Any, **kwargs: Any) -> tuple[str, str, str]:
    connection = connect(*args, **kwargs)
    try:
        return connection.server, connection.context, connection.namespace
    finally:
        connection.close()


def test_the_context_and_its_namespace_come_from_the_kubeconfig(tmp_path: Path, home: Path) -> None:
    path = kubeconfig(tmp_path / "config", {"prod": "team-a", "dev": None}, current="prod")
    assert connected(str(path)) == ("https://k8s.example:6443", "prod", "team-a")
    assert connected(str(path), "dev") == ("https://k8s.example:6443", "dev", "default")
    assert connected(None, None, {"KUBECONFIG": f"{tmp_path / 'missing'}:{path}"})[1:] == ("prod", "team-a")
    (home / ".kube").mkdir(parents=True)
    kubeconfig(home / ".kube" / "config", {"x": "y"}, "x")
    assert connected(None, None, {})[1:] == ("x", "y")


@pytest.mark.parametrize(
    ("setup", "code", "words"),
    [
        (lambda t: ({"kubeconfig": str(t / "nope")}, {}), 2, "--kubeconfig {t}/nope: no such file."),
        (lambda t: ({}, {"KUBECONFIG": str(t / "nope")}), 1, "no kubeconfig: KUBECONFIG names {t}/nope"),
        (lambda t: ({}, {}), 1, "no kubeconfig: KUBECONFIG is not set and {t}/home/.kube/config does not exist"),
        (
            lambda t: ({"kubeconfig": str(kubeconfig(t / "k", {"a": None}, "a")), "context": "b"}, {}),
            2,
            "--context b: the kubeconfig ({t}/k) has no such context; it has a",
        ),
        (
            lambda t: ({"kubeconfig": str(kubeconfig(t / "k", {"a": None}))}, {}),
            1,
            "the kubeconfig ({t}/k) has no current context: pass --context NAME",
        ),
        (
            lambda t: ({"kubeconfig": str((t / "k").write_text("{not: yaml") and t / "k")}, {}),
            1,
            "the kubeconfig {t}/k cannot be read",
        ),
    ],
    ids=["missing --kubeconfig", "missing KUBECONFIG", "none at all", "unknown context", "no current", "bad YAML"],
)
def test_kubeconfig_problems_are_sentences(tmp_path: Path, home: Path, setup: Any, code: int, words: str) -> None:
    flags, environ = setup(tmp_path)
    with pytest.raises(ClusterError) as raised:
        connect(flags.get("kubeconfig"), flags.get("context"), environ)
    assert raised.value.code == code
    assert words.format(t=tmp_path) in str(raised.value)


@pytest.fixture
def connection() -> Iterator[Connection]:
    api = k8s.ApiClient(k8s.Configuration())
    yield Connection(api, "https://k8s.example:6443", "prod", "team-a")
    api.close()  # type: ignore[no-untyped-call]


def api_error(status: int, message: str, details: dict[str, Any] | None = None) -> ApiException:
    return ApiException(status, "reason", body=json.dumps({"message": message, "details": details or {}}))


REFUSED = MaxRetryError(
    None,  # type: ignore[arg-type]
    "/apis",
    NewConnectionError(HTTPSConnection("k8s.example"), "Failed to establish a new connection: [Errno 111] refused"),
)

#: (error, from the context's namespace, exit code, not found, what the sentence says)
FAILURES = [
    (api_error(404, 'finetunejobs.kubetune.io "demo" not found', {"name": "demo"}), True, 1, True,
     "FineTuneJob demo not found in namespace team-a (the current context's): check the name and the namespace "
     "(-n NAMESPACE), or list every job with `kubectl get ftj -A`."),
    (api_error(404, 'finetunejobs.kubetune.io "demo" not found', {"name": "demo"}), False, 1, True,
     "FineTuneJob demo not found in namespace team-a: check"),
    (api_error(404, "the server could not find the requested resource"), True, 1, False,
     "the API server at https://k8s.example:6443 (context prod) does not serve FineTuneJobs (kubetune.io/v1alpha1): "
     "is kubetune installed"),
    (api_error(401, "Unauthorized"), True, 1, False, "did not accept your credentials (401 Unauthorized): log in again"),
    (api_error(403, 'User "bob" cannot get resource "finetunejobs"'), True, 1, False,
     'you may not read FineTuneJobs in namespace team-a (403 Forbidden: User "bob" cannot get resource '
     '"finetunejobs"): ask your cluster admin for `get` on finetunejobs.kubetune.io there; '
     "`kubectl auth can-i get finetunejobs.kubetune.io -n team-a` checks it."),
    (ApiException(503, "Service Unavailable", body="<html>busy</html>"), True, 1, False,
     "answered HTTP 503 (<html>busy</html>) when asked for FineTuneJob demo in namespace team-a: retry"),
    (REFUSED, True, 1, False,
     "cannot reach the API server at https://k8s.example:6443 (context prod): HTTPSConnection(host='k8s.example', "
     "port=443): Failed to establish a new connection: [Errno 111] refused. Check that the cluster is up"),
    (ReadTimeoutError(None, "/apis", "Read timed out. (read timeout=30)"), True, 1, False,  # type: ignore[arg-type]
     "cannot reach the API server at https://k8s.example:6443 (context prod): None: Read timed out."),
]  # fmt: skip


@pytest.mark.parametrize(("error", "from_context", "code", "not_found", "words"), FAILURES)
def test_every_failure_is_one_sentence_saying_what_to_do(
    connection: Connection, error: Exception, from_context: bool, code: int, not_found: bool, words: str
) -> None:
    explained = explain(error, connection, "team-a", "demo", from_context)
    assert (explained.code, explained.not_found) == (code, not_found)
    assert words in str(explained), str(explained)
    assert "\n" not in str(explained) and "object at 0x" not in str(explained)


@pytest.mark.parametrize(
    ("involved", "uid", "ours"),
    [
        ({"kind": "FineTuneJob", "name": "demo", "uid": "1"}, "1", True),
        ({"kind": "FineTuneJob", "name": "demo"}, "1", True),  # no uid on the event: by name
        ({"kind": "FineTuneJob", "name": "demo", "uid": "0"}, "1", False),  # an older job of that name
        ({"kind": "FineTuneJob", "name": "other", "uid": "1"}, "1", False),
        ({"kind": "Pod", "name": "demo"}, None, False),
    ],
)
def test_events_about_the_job(involved: dict[str, str], uid: str | None, ours: bool) -> None:
    assert about({"involvedObject": involved}, "demo", uid) is ours
