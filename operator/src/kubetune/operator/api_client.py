"""The API client's configuration, its retry settings and its error type: what every door to the API
server shares (kubetune.operator.kube for jobs and children, kubetune.operator.events for Events)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

#: The User-Agent of the operator's requests; the replica's identity is added (`user_agent`), so that the
#: audit log tells two replicas of one ServiceAccount apart.
USER_AGENT = "kubetune-operator"


def user_agent(identity: str) -> str:
    return f"{USER_AGENT}/{identity}" if identity else USER_AGENT


@dataclass(frozen=True)
class RetrySettings:
    """How transient API errors are retried."""

    attempts: int = 5
    """Tries per call, the first included."""
    first_delay: float = 0.2
    """Seconds before the second try; doubles on each further one."""
    max_delay: float = 5.0
    """Longest wait between two tries, in seconds."""
    request_timeout: float = 30.0
    """Seconds a single request may take."""


class ApiError(Exception):
    """An API call that failed for good: `status` is the HTTP code (0: no response), `details` the
    server's Status object when it sent one (reason, message, details.causes)."""

    def __init__(self, status: int, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.details = details or {}

    @property
    def server_message(self) -> str:
        """The server's own sentence (Status.message), else this error's text."""
        return str(self.details.get("message") or self)


def status_body(error: ApiException) -> dict[str, Any] | None:
    try:
        body = json.loads(error.body) if error.body else None
    except (TypeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def load_configuration(kubeconfig: str | None = None) -> k8s.Configuration:
    """Standard authentication: the in-cluster service account when running in a pod, else KUBECONFIG
    (or `kubeconfig`)."""
    configuration = k8s.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration
