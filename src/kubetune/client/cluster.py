"""Reading a FineTuneJob and its events with the user's kubeconfig, through the official `kubernetes` client.

Where the credentials come from, as kubectl finds them: `--kubeconfig FILE`, else `KUBECONFIG` (a list of
files, merged), else `~/.kube/config`, else the service account of the pod this runs in. The namespace is
`-n`, else the context's, else `default`. Objects are returned as the plain JSON dicts the server sent.

Every way this can fail becomes a `ClusterError` whose text is one sentence saying what to check or do,
and whose `code` is the command's exit status: 1 when the job cannot be read (not found, no kubeconfig,
the server unreachable or refusing), 2 when a flag is wrong (a --kubeconfig file or --context that does
not exist).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError

from kubetune.api.invocation import EXIT_BAD_INPUT
from kubetune.api.job import GROUP, KIND, PLURAL, VERSION

#: Seconds to connect, then to read one answer.
REQUEST_TIMEOUT = (5.0, 30.0)
#: Extra tries of a request that got no answer at all (urllib3's; the default is 3).
CONNECTION_RETRIES = 1
EXIT_NOT_READ = 1
DEFAULT_KUBECONFIG = "~/.kube/config"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LIST_EVERY_JOB = "`kubectl get ftj -A`"


class ClusterError(Exception):
    """A failure, as the sentence the user reads; `code` is the exit status, `not_found` is True when
    the job does not exist (the server answered, and has no such job)."""

    def __init__(self, message: str, code: int = EXIT_NOT_READ, not_found: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.not_found = not_found


@dataclass
class Connection:
    """An API client for one context of the user's kubeconfig."""

    api: k8s.ApiClient
    server: str
    context: str
    """The context's name (`in-cluster` for a pod's service account)."""
    namespace: str
    """The context's namespace (`default` where it names none)."""

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]


def _kubeconfig_files(flag: str | None, environ: Mapping[str, str]) -> tuple[str, list[Path]]:
    """(what the files were named by, the files): --kubeconfig, KUBECONFIG or ~/.kube/config."""
    if flag:
        return "--kubeconfig", [Path(flag).expanduser()]
    if environ.get("KUBECONFIG"):
        return "KUBECONFIG", [Path(p).expanduser() for p in environ["KUBECONFIG"].split(os.pathsep) if p]
    return "the default", [Path(DEFAULT_KUBECONFIG).expanduser()]


def _in_cluster(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and IN_CLUSTER_NAMESPACE.exists()


def connect(
    kubeconfig: str | None = None, context: str | None = None, environ: Mapping[str, str] | None = None
) -> Connection:
    """A client for `context` (or the current one) of the user's kubeconfig, or the pod's service account."""
    environ = os.environ if environ is None else environ
    named_by, files = _kubeconfig_files(kubeconfig, environ)
    existing = [f for f in files if f.is_file()]
    if not existing:
        if named_by == "--kubeconfig":
            raise ClusterError(f"--kubeconfig {files[0]}: no such file.", EXIT_BAD_INPUT)
        if named_by == "the default" and context is None and _in_cluster(environ):
            return _in_cluster_connection()
        where = (
            f"KUBECONFIG names {', '.join(map(str, files))}, which does not exist"
            if named_by == "KUBECONFIG"
            else f"KUBECONFIG is not set and {files[0]} does not exist"
        )
        raise ClusterError(
            f"no kubeconfig: {where}; pass --kubeconfig FILE or set KUBECONFIG to the kubeconfig kubectl uses "
            "for your cluster (`kubectl config view` shows it)."
        )
    config_file = os.pathsep.join(map(str, existing))
    try:
        merged = kube_config.KubeConfigMerger(config_file).config  # type: ignore[no-untyped-call]
        document: dict[str, Any] = merged.value if merged is not None else {}
        contexts = [getattr(c, "value", c) for c in document.get("contexts") or []]
        names = [str(c["name"]) for c in contexts]
    except Exception as error:  # the library raises ConfigException, yaml, type and key errors alike
        raise ClusterError(
            f"the kubeconfig {config_file} cannot be read ({_one_line(error)}): check it with `kubectl config view`."
        ) from error
    if context is not None and context not in names:
        raise ClusterError(
            f"--context {context}: the kubeconfig ({config_file}) has no such context; it has "
            f"{', '.join(names) or 'none'} (`kubectl config get-contexts`).",
            EXIT_BAD_INPUT,
        )
    wanted = context or document.get("current-context")
    chosen = next((c for c in contexts if c["name"] == wanted), None)
    if chosen is None:
        problem = f"names {wanted}, which it does not define" if wanted else "has no current context"
        raise ClusterError(
            f"the kubeconfig ({config_file}) {problem}: pass --context NAME or run `kubectl config use-context NAME`."
        )
    configuration = k8s.Configuration()
    try:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=config_file, context=chosen["name"], client_configuration=configuration
        )
    except Exception as error:  # ConfigException, exec plugins that fail, unreadable certificate files
        raise ClusterError(
            f"context {chosen['name']} of the kubeconfig ({config_file}) cannot be used ({_one_line(error)}): "
            "check it with `kubectl config view` and `kubectl cluster-info`."
        ) from error
    configuration.retries = CONNECTION_RETRIES
    namespace = (chosen.get("context") or {}).get("namespace") or "default"
    return Connection(k8s.ApiClient(configuration), configuration.host, chosen["name"], namespace)


def _in_cluster_connection() -> Connection:
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        namespace = IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except (k8s_config.ConfigException, OSError) as error:
        raise ClusterError(
            f"no kubeconfig, and this pod's service account cannot be used ({_one_line(error)}): "
            "pass --kubeconfig FILE or set KUBECONFIG."
        ) from error
    configuration.retries = CONNECTION_RETRIES
    return Connection(k8s.ApiClient(configuration), configuration.host, "in-cluster", namespace)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    # urllib3 names the connection object first: "<urllib3.connection.HTTPSConnection object at 0x..>: ..."
    return re.sub(r"<[^>]* object at 0x[0-9a-f]+>:?\s*", "", text)


def _server_message(error: ApiException) -> str:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return _one_line(Exception(error.body or error.reason or ""))
    return str(body.get("message") or error.reason or "") if isinstance(body, dict) else str(body)


def _names_the_object(error: ApiException, name: str) -> bool:
    """A 404 about the object itself (its `details.name`), not about the resource type."""
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return False
    return isinstance(body, dict) and (body.get("details") or {}).get("name") == name


def explain(
    error: Exception, connection: Connection, namespace: str, name: str, namespace_from_context: bool
) -> ClusterError:
    """The sentence for a failed read of FineTuneJob `namespace`/`name`."""
    job = f"FineTuneJob {name}"
    where = f"the API server at {connection.server} (context {connection.context})"
    if isinstance(error, ApiException) and error.status:
        status, message = int(error.status), _server_message(error)
        if status == 404:
            unknown = "could not find the requested resource" in message and not _names_the_object(error, name)
            if unknown:
                return ClusterError(
                    f"{where} does not serve FineTuneJobs ({GROUP}/{VERSION}): is kubetune installed in this "
                    "cluster (its Helm chart brings the CRD), and is this the context you mean (--context)?"
                )
            own = " (the current context's)" if namespace_from_context else ""
            return ClusterError(
                f"{job} not found in namespace {namespace}{own}: check the name and the namespace "
                f"(-n NAMESPACE), or list every job with {LIST_EVERY_JOB}.",
                not_found=True,
            )
        if status == 401:
            return ClusterError(
                f"{where} did not accept your credentials (401 Unauthorized): log in again or refresh the "
                "kubeconfig's token, then retry."
            )
        if status == 403:
            return ClusterError(
                f"you may not read FineTuneJobs in namespace {namespace} (403 Forbidden: {message}): ask your "
                f"cluster admin for `get` on {PLURAL}.{GROUP} there; `kubectl auth can-i get {PLURAL}.{GROUP} "
                f"-n {namespace}` checks it."
            )
        return ClusterError(
            f"{where} answered HTTP {status} ({message}) when asked for {job} in namespace {namespace}: retry, "
            "or check the server's health (`kubectl get --raw /readyz`)."
        )
    reason: BaseException = error.reason if isinstance(error, MaxRetryError) and error.reason else error
    return ClusterError(
        f"cannot reach {where}: {_one_line(reason)}. Check that the cluster is up and reachable from here "
        "(VPN, proxy, firewall) and that this is the kubeconfig and context you mean (`kubectl cluster-info`)."
    )


#: What a failed request raises: the server's answer, or no answer (refused, timed out, TLS, DNS).
REQUEST_ERRORS = (ApiException, Urllib3Error, OSError)


def read_job(connection: Connection, namespace: str, name: str) -> dict[str, Any]:
    """The FineTuneJob as the server has it (raises ApiException, urllib3 and OS errors; see `explain`)."""
    api = k8s.CustomObjectsApi(connection.api)
    job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT)
    if not isinstance(job, dict):
        raise ClusterError(f"the API server's answer for FineTuneJob {namespace}/{name} is not an object: retry.")
    return job


def read_events(connection: Connection, namespace: str, name: str, uid: str | None) -> list[dict[str, Any]]:
    """The events about the job (about this very object where its uid is known), as the server has them."""
    response = k8s.CoreV1Api(connection.api).list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.kind={KIND},involvedObject.name={name}",
        _request_timeout=REQUEST_TIMEOUT,
        _preload_content=False,
    )
    data: bytes = getattr(response, "data", b"")  # _preload_content=False: the raw HTTP response
    items: list[dict[str, Any]] = json.loads(data or b"{}").get("items") or []
    return [event for event in items if about(event, name, uid)]


def about(event: Mapping[str, Any], name: str, uid: str | None) -> bool:
    """Whether an event is about FineTuneJob `name` (not an older job of that name, where uids are known)."""
    involved = event.get("involvedObject") or {}
    if involved.get("kind") != KIND or involved.get("name") != name:
        return False
    return not (uid and involved.get("uid") and involved["uid"] != uid)
