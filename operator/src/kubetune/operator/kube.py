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
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kubetune.api.job import GROUP, PLURAL, VERSION
from kubetune.operator import metrics
from kubetune.operator.api_client import ApiError, RetrySettings, load_configuration, status_body, user_agent
from kubetune.operator.owners import ForeignObjectError, StaleObjectError, controlled_by_a_job, owner_uids
from kubetune.operator.ratelimit import TokenBucket, WriteLimit

T = TypeVar("T")
__all__ = ["ApiError", "Kube", "RetrySettings", "load_configuration"]
logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Answers that callers treat as states ("not found", "already exists"), not as failures.
EXPECTED_STATUS = frozenset({404, 409})
MERGE_PATCH = "application/merge-patch+json"
#: The Kueue API the operator speaks (Workload and ResourceFlavor; v1beta2 is what Kueue v0.17 stores).
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta2"


#: Threads for the operator's API calls; for progress writes; connections kept in the client's pool
#: (the threads', the informers' watches', the Lease's).
API_THREADS, PROGRESS_THREADS, CONNECTIONS = 16, 2, 32
#: Seconds a progress write waits after another write, and at most in all: during a wave of creates or
#: restarts progress is written when the wave pauses, or late by this much at most.
YIELD_AFTER_WRITE, YIELD_AT_MOST = 0.2, 10.0


class Kube:
    """Typed-by-purpose calls for FineTuneJobs and their children."""

    def __init__(
        self,
        configuration: k8s.Configuration,
        retry: RetrySettings | None = None,
        writes: WriteLimit | None = None,
        identity: str = "",
    ) -> None:
        self.configuration = configuration
        self.retry = retry or RetrySettings()
        # The client blocks, so calls run in threads of their own, never asyncio's default executor (on 2
        # cores, 6 threads shared with everything else: a wave of progress writes queued creates, restarts
        # and the Lease's renewals behind it). Progress writes get 2 threads apart, so that the others
        # never wait behind them; the connection pool holds a connection per thread and per informer watch.
        self._threads = ThreadPoolExecutor(API_THREADS, thread_name_prefix="kube-api")
        self._progress_threads = ThreadPoolExecutor(PROGRESS_THREADS, thread_name_prefix="kube-api-progress")
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, CONNECTIONS)
        self._client = k8s.ApiClient(configuration)
        self._writing = 0
        """Writes other than progress in flight (progress writes yield to them)."""
        self._last_write = 0.0
        self._client.user_agent = user_agent(identity)
        self.fence: Callable[[], None] = lambda: None
        """Asked before every write is sent, in the request's thread; raises to refuse it (leader election:
        kubetune.operator.lease.Elector.check)."""
        self.core = self._core = k8s.CoreV1Api(self._client)
        self.custom = self._custom = k8s.CustomObjectsApi(self._client)
        self._networking = k8s.NetworkingV1Api(self._client)
        self._writes = TokenBucket(writes or WriteLimit())

    @property
    def api_client(self) -> k8s.ApiClient:
        """The client (connection pool, credentials) this door uses: the Lease shares it."""
        return self._client

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._progress_threads.shutdown(wait=False, cancel_futures=True)

    async def _call(self, verb: str, call: Callable[[], Any], low: bool = False) -> Any:
        """Run one blocking call in a thread, retrying transient failures; decode its JSON body. A `low`
        write waits for a spare token (ratelimit.TokenBucket.acquire)."""
        delay = self.retry.first_delay
        write = not verb.startswith(("get_", "list_"))
        for attempt in range(1, self.retry.attempts + 1):
            if write:
                await self._writes.acquire(low)  # writes are rate-limited (ratelimit.WriteLimit); reads are not
            if low:
                await self._yield_to_writes()
            counted = write and not low
            self._writing += counted
            try:
                threads = self._progress_threads if low else self._threads
                blocking = self._fenced(call) if write else call
                response = await asyncio.get_running_loop().run_in_executor(threads, blocking)
                body = response.data
                return json.loads(body) if body else {}
            except ApiException as error:
                status = int(error.status or 0)
                if status not in EXPECTED_STATUS:  # 404 / 409 answer "is it there?": not errors
                    metrics.record_api_error(verb, status)
                if status not in RETRYABLE_STATUS or attempt == self.retry.attempts:
                    raise ApiError(status, str(error.reason or error.body), status_body(error)) from error
            except (urllib3.exceptions.HTTPError, OSError) as error:
                metrics.record_api_error(verb, 0)
                if attempt == self.retry.attempts:
                    raise ApiError(0, str(error)) from error
            finally:
                if counted:
                    self._writing -= 1
                    self._last_write = time.monotonic()
            logger.debug("API %s failed (try %d), retrying in %.1fs", verb, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _yield_to_writes(self) -> None:
        """A progress write waits while other writes are in flight or were a moment ago (creates, restarts:
        the API server's time goes to them first), at most YIELD_AT_MOST seconds."""
        began = time.monotonic()
        while self._writing or time.monotonic() - self._last_write < YIELD_AFTER_WRITE:
            if time.monotonic() - began > YIELD_AT_MOST:
                return
            await asyncio.sleep(YIELD_AFTER_WRITE / 2)

    def _fenced(self, call: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: (self.fence(), call())[1]

    def _options(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self.retry.request_timeout}

    # --- FineTuneJobs -------------------------------------------------------------------------------

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(
            "get_job",
            lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, **self._options()
            ),
        )

    async def patch_job_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
        low_priority: bool = False,
    ) -> dict[str, Any]:
        """The job after the patch. With `resource_version`, only if the job is still at that version (else
        ApiError 409: the caller read a stale copy). `low_priority`: a progress write, behind the others."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        patched: dict[str, Any] = await self._call(
            "patch_status",
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE_PATCH, **self._options()
            ),
            low_priority,
        )
        return patched

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

    async def create_pod(self, pod: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        return await self._create_owned(
            pod, owner_uid, "pod", self._core.create_namespaced_pod, self._core.read_namespaced_pod
        )

    async def delete_pod(self, namespace: str, name: str, uid: str | None = None) -> dict[str, Any] | None:
        """The pod as it is being deleted (with its deletionTimestamp); None when it was gone, or when `uid`
        is given and the pod of that name is another one now (the server checks it: a stale view never
        deletes a pod it did not see)."""
        return await self._delete_pod("delete_pod", namespace, name, uid, None)

    async def _delete_pod(
        self, verb: str, namespace: str, name: str, uid: str | None, grace: int | None
    ) -> dict[str, Any] | None:
        # the grace period goes in the body: with a body, the API server ignores the query's gracePeriodSeconds
        # (a force delete would silently wait for a lost kubelet; seen on the real control plane)
        body = k8s.V1DeleteOptions(
            grace_period_seconds=grace, preconditions=k8s.V1Preconditions(uid=uid) if uid else None
        )
        try:
            deleted: dict[str, Any] = await self._call(
                verb, lambda: self._core.delete_namespaced_pod(name, namespace, body=body, **self._options())
            )
            return deleted
        except ApiError as error:
            if error.status == 404 or (error.status == 409 and uid):
                return None
            raise

    async def create_service(self, service: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        return await self._create_owned(
            service, owner_uid, "service", self._core.create_namespaced_service, self._core.read_namespaced_service
        )

    async def create_configmap(self, configmap: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        return await self._create_owned(
            configmap,
            owner_uid,
            "configmap",
            self._core.create_namespaced_config_map,
            self._core.read_namespaced_config_map,
        )

    async def create_network_policy(self, policy: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        networking = self._networking
        create, read = networking.create_namespaced_network_policy, networking.read_namespaced_network_policy
        return await self._create_owned(policy, owner_uid, "networkpolicy", create, read)

    async def _create_owned(
        self, manifest: dict[str, Any], owner_uid: str, kind: str, create: Callable[..., Any], read: Callable[..., Any]
    ) -> dict[str, Any]:
        """Create a child of the job `owner_uid`; the object as stored. "Already exists" is success only when the
        existing object is this job's; one another FineTuneJob controls (a deleted job of the same name, not yet
        collected) is deleted, with its uid as precondition, and StaleObjectError raised: the caller looks again
        later; anything else raises ForeignObjectError and is left alone (kubetune.operator.owners)."""
        namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        try:
            created: dict[str, Any] = await self._call(
                f"create_{kind}", lambda: create(namespace, cast(Any, manifest), **self._options())
            )
            return created
        except ApiError as error:
            if error.status != 409:
                raise
        try:
            existing: dict[str, Any] = await self._call(f"get_{kind}", lambda: read(name, namespace, **self._options()))
        except ApiError as error:
            if error.status == 404:  # removed meanwhile: the next reconcile creates it
                raise StaleObjectError(kind, name) from error
            raise
        if owner_uid in owner_uids(existing):
            return existing
        if not controlled_by_a_job(existing):  # someone's own object: never deleted (owners.py)
            raise ForeignObjectError(kind, namespace, name)
        stale_uid = existing.get("metadata", {}).get("uid")
        logger.info("%s %s/%s belongs to another owner; deleting it (uid %s)", kind, namespace, name, stale_uid)
        await self._delete_child(kind, namespace, name, stale_uid)
        raise StaleObjectError(kind, name)

    async def _delete_child(self, kind: str, namespace: str, name: str, uid: str | None) -> None:
        deletes = {
            "pod": self._core.delete_namespaced_pod,
            "service": self._core.delete_namespaced_service,
            "configmap": self._core.delete_namespaced_config_map,
            "networkpolicy": self._networking.delete_namespaced_network_policy,
        }
        body = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid), propagation_policy="Background")
        try:
            await self._call(f"delete_{kind}", lambda: deletes[kind](name, namespace, body=body, **self._options()))
        except ApiError as error:
            if error.status not in (404, 409):  # gone, or already replaced (uid precondition failed)
                raise

    async def create_event(self, event: dict[str, Any]) -> None:
        """Post a v1 Event (kubetune.operator.events builds it)."""
        namespace = event["metadata"]["namespace"]
        await self._call(
            "create_event", lambda: self._core.create_namespaced_event(namespace, cast(Any, event), **self._options())
        )

    async def get_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A PersistentVolumeClaim (read-only: the operator never creates or changes claims); None when it
        does not exist."""
        return await self._get_or_none(
            "get_claim",
            lambda: self._core.read_namespaced_persistent_volume_claim(name, namespace, **self._options()),
        )

    async def delete_pod_now(self, namespace: str, name: str, uid: str | None = None) -> dict[str, Any] | None:
        """Force deletion (grace 0): for a pod whose node is lost and will never confirm its end (`uid` as in
        `delete_pod`)."""
        return await self._delete_pod("delete_pod", namespace, name, uid, 0)

    async def get_node(self, name: str) -> dict[str, Any] | None:
        return await self._get_or_none("get_node", lambda: self._core.read_node(name, **self._options()))

    async def list_attach_failures(self, namespace: str, pod_uid: str) -> list[dict[str, Any]]:
        """The attach-detach controller's FailedAttachVolume Events of one pod (selected by the server, a
        handful at most); none where the operator may not list Events (a chart older than this read)."""
        selector = f"involvedObject.uid={pod_uid},reason=FailedAttachVolume"
        try:
            listed = await self._call(
                "list_events",
                lambda: self._core.list_namespaced_event(namespace, field_selector=selector, **self._options()),
            )
        except ApiError as error:
            if error.status != 403:
                raise
            logger.warning("may not list Events in %s: a volume still attached elsewhere is not recognised", namespace)
            return []
        items: list[dict[str, Any]] = listed.get("items") or []
        return [e for e in items if (e.get("involvedObject") or {}).get("uid") == pod_uid]  # a server may not select

    async def _get_or_none(self, verb: str, call: Callable[[], Any]) -> dict[str, Any] | None:
        """The object `call` reads; None when it does not exist (404)."""
        try:
            result: dict[str, Any] = await self._call(verb, call)
            return result
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    # --- Kueue (queued jobs: kubetune.operator.workloads) ----------------------------------------------

    async def serves_kueue(self) -> bool:
        """Whether the API server serves Kueue's Workload API (discovery, which every user may read)."""
        found = await self._get_or_none(
            "get_kueue_discovery",
            lambda: self._custom.get_api_resources(KUEUE_GROUP, KUEUE_VERSION, **self._options()),
        )
        return found is not None and any(r.get("name") == "workloads" for r in found.get("resources") or [])

    async def get_workload(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(
            "get_workload",
            lambda: self._custom.get_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", name, **self._options()
            ),
        )

    async def create_workload(self, workload: dict[str, Any]) -> dict[str, Any]:
        """Create the job's Workload; when it exists already (a lost race with a previous reconcile), the one stored."""
        namespace, name = workload["metadata"]["namespace"], workload["metadata"]["name"]
        try:
            created: dict[str, Any] = await self._call(
                "create_workload",
                lambda: self._custom.create_namespaced_custom_object(
                    KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", workload, **self._options()
                ),
            )
            return created
        except ApiError as error:
            if error.status != 409 or (existing := await self.get_workload(namespace, name)) is None:
                raise
            return existing

    async def patch_workload_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the Workload's status (carrying its resourceVersion: a stale read is refused, 409)."""
        patched: dict[str, Any] = await self._call(
            "patch_workload_status",
            lambda: self._custom.patch_namespaced_custom_object_status(
                KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads", name, patch,
                _content_type=MERGE_PATCH, **self._options(),
            ),
        )  # fmt: skip
        return patched

    async def get_resource_flavor(self, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(
            "get_resource_flavor",
            lambda: self._custom.get_cluster_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, "resourceflavors", name, **self._options()
            ),
        )

    async def get_priority(self, priority_class: str) -> int | None:
        """The value of a PriorityClass; None when it does not exist."""
        found = await self._get_or_none(
            "get_priority_class",
            lambda: self._custom.get_cluster_custom_object(
                "scheduling.k8s.io", "v1", "priorityclasses", priority_class, **self._options()
            ),
        )
        return int(found["value"]) if found is not None and "value" in found else None

    async def unsuspend_job(self, namespace: str, name: str) -> dict[str, Any]:
        """spec.suspend: false on a queued job that Kueue admitted (Kueue's convention for its integrations)."""
        body = {"spec": {"suspend": False}}
        patched: dict[str, Any] = await self._call(
            "unsuspend_job",
            lambda: self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE_PATCH, **self._options()
            ),
        )
        return patched

    @staticmethod
    async def _ignore(status: int, call: Awaitable[T]) -> T | None:
        """Await `call`; an ApiError with `status` means the desired state already holds."""
        try:
            return await call
        except ApiError as error:
            if error.status != status:
                raise
            return None
