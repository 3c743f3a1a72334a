"""kmock's KubernetesEmulator with the real API server's semantics where kubetune relies on them.

kmock keeps objects in memory and serves list/watch/get/create/patch/delete. `ApiServer` extends it
(it is designed to be subclassed) with what a real API server and its controller manager do; each
extension says what it emulates:

- metadata on create: uid, creationTimestamp, generation, name from generateName (kopf's events);
- resourceVersion, new on every write, so kopf's JSON patches that `test` it apply, and a failed
  `test` answered 422 as a real server does;
- generation bumped on spec changes, never on status writes (observedGeneration);
- label selectors on list and watch (`k=v`, `k!=v`, `k`, `!k`, comma = and);
- the garbage collector: objects whose owner is gone are deleted (background propagation);
- graceful pod deletion (optional): a deleted pod keeps running with a deletionTimestamp until the
  "kubelet" (the test) confirms it stopped, so "gone" and "being deleted" differ as on a real node.

Still missing (see environment.md): optimistic concurrency on merge patches and updates (the
operator writes status with merge patches that carry no resourceVersion, so a real server never
answers them 409; kopf's JSON patches do test it, and that works here), schema/CEL validation (the
operator re-validates with the pydantic models and keeps the launched spec), the cluster-scoped
`GET /api/v1/namespaces` path (kmock cannot parse it: kopf needs it only with --namespace), and
nothing runs pods: tests patch pod statuses the way a kubelet would.
"""

from __future__ import annotations

import copy
import datetime
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import jsonpatch
import kmock
from kmock._internal import enums, rendering

from kubetune.api.crd import custom_resource_definition
from kubetune.api.job import GROUP, PLURAL, VERSION

#: The finalizer that stands for "the kubelet has not yet stopped this pod's containers".
KUBELET_FINALIZER = "emulator.kubetune.io/kubelet"

JOBS = f"{GROUP}/{VERSION}/{PLURAL}"
PODS = "v1/pods"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def label_selector_matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes' equality-based label selector semantics."""
    labels = labels or {}
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class ApiServer(kmock.KubernetesEmulator):
    """KubernetesEmulator with the real API server's behaviours listed in the module docstring."""

    graceful_pod_deletion: bool = False

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            # Emulates the API server's defaulting of object metadata on create (generateName included).
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            meta.setdefault("generation", 1)
            meta["resourceVersion"] = self._next_resource_version()
            if self.graceful_pod_deletion and str(request.resource) == str(kmock.resource(PODS)):
                meta.setdefault("finalizers", []).append(KUBELET_FINALIZER)
        if request.resource is not None and request.action == enums.action.UPDATE:
            if request.subresource is None:
                self._bump_generation(request)
            self._set_resource_version(request)
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as error:
            # Emulates the API server's answer to a JSON patch whose `test` fails: 422 Invalid (kopf
            # then retries on its next cycle), not kmock's 500.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from error
        finally:
            if request.resource is not None and request.action in (enums.action.DELETE, enums.action.UPDATE):
                await self._collect_garbage()

    def _next_resource_version(self) -> str:
        self._resource_version = getattr(self, "_resource_version", 0) + 1
        return str(self._resource_version)

    def _set_resource_version(self, request: rendering.Request) -> None:
        """Emulates metadata.resourceVersion: every write gives the object a new one. JSON patches keep
        their own `test` operations (kopf tests the version it read: optimistic concurrency) and get
        the new version appended."""
        version = self._next_resource_version()
        if isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["resourceVersion"] = version
        elif isinstance(request.data, list):
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    def _bump_generation(self, request: rendering.Request) -> None:
        """Emulates metadata.generation: it grows when the spec changes (status has its own endpoint)."""
        if not isinstance(request.data, dict) or "spec" not in request.data:
            return
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            current = self.objects[key].raw
            merged = copy.deepcopy(current.get("spec", {}))
            merged.update(request.data["spec"])
            if merged != current.get("spec"):
                generation = int(current.get("metadata", {}).get("generation", 1)) + 1
                request.data.setdefault("metadata", {})["generation"] = generation

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        # Emulates server-side label selectors.
        result: Any = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        if selector and isinstance(result, dict):
            result["items"] = [
                item for item in result["items"] if label_selector_matches(selector, item["metadata"].get("labels"))
            ]
        return result  # type: ignore[no-any-return]

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        # Emulates server-side label selectors on watch streams.
        selector = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if (
                not selector
                or not isinstance(event, dict)
                or label_selector_matches(selector, event.get("object", {}).get("metadata", {}).get("labels"))
            ):
                yield event

    async def _collect_garbage(self) -> None:
        """Emulates the garbage collector (background propagation): dependents of a deleted owner go."""
        async with self._lock:
            live_uids = {obj.raw.get("metadata", {}).get("uid") for obj in self.objects.values() if not obj.deleted}
            for key, obj in list(self.objects.items()):
                if obj.deleted:
                    continue
                meta = obj.raw.get("metadata", {})
                owners = [ref.get("uid") for ref in meta.get("ownerReferences") or []]
                if not owners or any(uid in live_uids for uid in owners) or meta.get("deletionTimestamp"):
                    continue
                resource = key[0]
                if meta.get("finalizers"):
                    obj.patch({"metadata": {"deletionTimestamp": now_rfc3339()}})
                    await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                else:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})


def declare_resources(server: ApiServer) -> None:
    """The resources kopf and kubetune use, with the FineTuneJob CRD itself as an object."""
    verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    info = kmock.ResourceInfo
    server.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
        namespaced=False, kind="CustomResourceDefinition", verbs=verbs
    )
    server.resources["v1/namespaces"] = info(namespaced=False, kind="Namespace", verbs=verbs)
    server.resources["v1/nodes"] = info(namespaced=False, kind="Node", verbs=verbs, subresources={"status"})
    server.resources["v1/events"] = info(namespaced=True, kind="Event", verbs=verbs)
    server.resources[PODS] = info(namespaced=True, kind="Pod", verbs=verbs, subresources={"status"})
    server.resources["v1/services"] = info(namespaced=True, kind="Service", verbs=verbs)
    server.resources["v1/configmaps"] = info(namespaced=True, kind="ConfigMap", verbs=verbs)
    server.resources["v1/resourcequotas"] = info(namespaced=True, kind="ResourceQuota", verbs=verbs)
    server.resources["v1/persistentvolumeclaims"] = info(namespaced=True, kind="PersistentVolumeClaim", verbs=verbs)
    server.resources[JOBS] = info(namespaced=True, kind="FineTuneJob", verbs=verbs, subresources={"status"})
    crd = custom_resource_definition()
    server.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]] = crd
