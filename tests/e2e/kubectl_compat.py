"""What the real `kubectl` needs from the emulated API server, beyond what kmock 0.8 serves.

Each override below emulates one behaviour of a real API server that kubectl depends on; the docs
(docs/e2e.md) list what still does not work. Mixed into `harness.E2EApiServer`.

- Lists carry `kind: <Kind>List` and `apiVersion` (kubectl decodes a list by its kind).
- Discovery lists a subresource (`pods/status`) without the resource's short names and categories: a
  real server does so, and kubectl otherwise finds `ftj` ambiguous between two resources.
- Discovery of the core group says `groupVersion: v1` (kmock says `/v1`, which kubectl cannot parse,
  so it knows no core resource at all).
- Errors are `Status` objects with Kubernetes' reasons (`NotFound`, `AlreadyExists`) and details naming
  the object: kubectl apply creates an object only on a 404 it recognises as NotFound, and prints
  `finetunejobs.kubetune.io "x" not found` from the details.
- Resources carry their singular names, short names (`ftj`, `po`, `svc`, `cm`) and categories, as the
  CRD and the built-in resources declare them (`declare_names`).
"""

from __future__ import annotations

from typing import Any

import aiohttp.web
import kmock
from kmock._internal import rendering

from kubetune.api.job import CATEGORIES, PLURAL, SHORT_NAMES, SINGULAR

#: Kubernetes' Status reason for each kmock error status.
STATUS_REASONS = {404: "NotFound", 409: "AlreadyExists"}


class KubectlCompatible(kmock.KubernetesEmulator):
    """Mixin: the kubectl-facing fixes listed in the module docstring."""

    def _kind_of(self, request: rendering.Request) -> tuple[str, str]:
        resource = request.resource
        assert resource is not None
        info = self.resources.get(resource)
        kind = info.kind if info is not None and info.kind else (resource.plural or "").capitalize()
        api_version = f"{resource.group}/{resource.version}" if resource.group else (resource.version or "v1")
        return kind, api_version

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        result: Any = await super()._serve_list(request)
        if isinstance(result, dict):
            kind, api_version = self._kind_of(request)
            result.setdefault("kind", f"{kind}List")
            result.setdefault("apiVersion", api_version)
        return result  # type: ignore[no-any-return]

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        result: Any = await super()._serve_version(request)
        if result.get("groupVersion", "").startswith("/"):
            result["groupVersion"] = result["groupVersion"][1:]
        for entry in result.get("resources", []):
            if "/" in entry["name"]:
                entry["shortNames"] = []
                entry["categories"] = []
        return result  # type: ignore[no-any-return]

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        try:
            return await super()._handle(request)
        except kmock.KubernetesError as error:
            if error.status not in STATUS_REASONS:
                raise
            return not_found_or_exists(request, error.status)


def not_found_or_exists(request: rendering.Request, code: int) -> aiohttp.web.StreamResponse:
    """The Status a real API server answers for a missing or already existing object."""
    data = request.data if isinstance(request.data, dict) else {}
    name = request.name or (data.get("metadata") or {}).get("name") or ""
    plural = request.resource.plural if request.resource and request.resource.plural else ""
    group = request.resource.group if request.resource and request.resource.group else ""
    qualified = f"{plural}.{group}" if group else plural
    verb = "not found" if code == 404 else "already exists"
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code}
    body |= {"reason": STATUS_REASONS[code], "message": f'{qualified} "{name}" {verb}'}
    body["details"] = {"name": name, "group": group, "kind": plural}
    return aiohttp.web.json_response(body, status=code)


def declare_names(server: kmock.KubernetesEmulator) -> None:
    """Singular names, short names and categories of the resources kubetune uses (discovery)."""
    names = {
        f"kubetune.io/v1alpha1/{PLURAL}": (SINGULAR, set(SHORT_NAMES), set(CATEGORIES)),
        "v1/pods": ("pod", {"po"}, {"all"}),
        "v1/services": ("service", {"svc"}, {"all"}),
        "v1/configmaps": ("configmap", {"cm"}, set()),
        "v1/events": ("event", {"ev"}, set()),
        "v1/namespaces": ("namespace", {"ns"}, set()),
    }
    for resource, (singular, short, categories) in names.items():
        info = server.resources[resource]
        info.singular, info.shortnames, info.categories = singular, short, categories
