"""The operator's only door to the Kubernetes API (besides kopf's own watching and event posting).

Why the synchronous `kubernetes` client in a thread: it is the official, maintained client with the
standard authentication (in-cluster service account, KUBECONFIG, exec plugins), and kopf logs in with
the very same configuration (its login handler returns `handlers.connection_info(configuration)`), so
there is one source of credentials.
kubernetes_asyncio is not a dependency, and kopf's own API helpers are private (`kopf._cogs`). Calls are
few per reconcile, so a thread per call costs nothing that matters.

Objects travel as plain dicts (responses are decoded here, not into generated models), exactly what
the pure builders produce and the observers read. Transient API errors (429, 5xx, connection errors)
are retried with bounded exponential backoff; "already exists" on create and "not found" on delete are
the desired state already and are not errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.operator import metrics
from kubetune.operator.builders import JOB_LABEL

T = TypeVar("T")
logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Answers that callers treat as states ("not found", "already exists"), not as failures.
EXPECTED_STATUS = frozenset({404, 409})
MERGE_PATCH = "application/merge-patch+json"


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
    """An API call that failed for good: `status` is the HTTP code (0: no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status


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


class Kube:
    """Typed-by-purpose calls for FineTuneJobs and their children."""

    def __init__(self, configuration: k8s.Configuration, retry: RetrySettings | None = None) -> None:
        self.configuration = configuration
        self.retry = retry or RetrySettings()
        self._client = k8s.ApiClient(configuration)
        self._core = k8s.CoreV1Api(self._client)
        self._custom = k8s.CustomObjectsApi(self._client)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    async def _call(self, verb: str, call: Callable[[], Any]) -> Any:
        """Run one blocking call in a thread, retrying transient failures; decode its JSON body."""
        delay = self.retry.first_delay
        for attempt in range(1, self.retry.attempts + 1):
            try:
                response = await asyncio.to_thread(call)
                body = response.data
                return json.loads(body) if body else {}
            except ApiException as error:
                status = int(error.status or 0)
                if status not in EXPECTED_STATUS:  # 404 / 409 answer "is it there?": not errors
                    metrics.record_api_error(verb, status)
                if status not in RETRYABLE_STATUS or attempt == self.retry.attempts:
                    raise ApiError(status, str(error.reason or error.body)) from error
            except (urllib3.exceptions.HTTPError, OSError) as error:
                metrics.record_api_error(verb, 0)
                if attempt == self.retry.attempts:
                    raise ApiError(0, str(error)) from error
            logger.debug("API %s failed (try %d), retrying in %.1fs", verb, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _options(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self.retry.request_timeout}

    # --- FineTuneJobs -------------------------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call(
                "get_job",
                lambda: self._custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, **self._options()
                ),
            )
            return result
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        body = {"status": status}
        await self._call(
            "patch_status",
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE_PATCH, **self._options()
            ),
        )

    async def delete_job(self, namespace: str, name: str) -> None:
        await self._ignore(
            404,
            self._call(
                "delete_job",
                lambda: self._custom.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background", **self._options()
                ),
            ),
        )

    # --- Children -----------------------------------------------------------------------------------

    async def list_pods(self, namespace: str, job_name: str) -> list[dict[str, Any]]:
        """Pods labelled as the job's (the caller filters again: see observe.owned_by)."""
        result = await self._call(
            "list_pods",
            lambda: self._core.list_namespaced_pod(
                namespace, label_selector=f"{JOB_LABEL}={job_name}", **self._options()
            ),
        )
        items: list[dict[str, Any]] = result.get("items") or []
        return items

    async def create_pod(self, pod: dict[str, Any]) -> None:
        namespace = pod["metadata"]["namespace"]
        await self._ignore(
            409,
            self._call(
                "create_pod", lambda: self._core.create_namespaced_pod(namespace, cast(Any, pod), **self._options())
            ),
        )

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._ignore(
            404,
            self._call("delete_pod", lambda: self._core.delete_namespaced_pod(name, namespace, **self._options())),
        )

    async def create_service(self, service: dict[str, Any]) -> None:
        namespace = service["metadata"]["namespace"]
        await self._ignore(
            409,
            self._call(
                "create_service",
                lambda: self._core.create_namespaced_service(namespace, cast(Any, service), **self._options()),
            ),
        )

    async def create_configmap(self, configmap: dict[str, Any]) -> None:
        namespace = configmap["metadata"]["namespace"]
        await self._ignore(
            409,
            self._call(
                "create_configmap",
                lambda: self._core.create_namespaced_config_map(namespace, cast(Any, configmap), **self._options()),
            ),
        )

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._call(
                "get_configmap", lambda: self._core.read_namespaced_config_map(name, namespace, **self._options())
            )
            return result
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    @staticmethod
    async def _ignore(status: int, call: Awaitable[T]) -> T | None:
        """Await `call`; an ApiError with `status` means the desired state already holds."""
        try:
            return await call
        except ApiError as error:
            if error.status != status:
                raise
            return None
