"""A small synchronous client for a real API server (TLS, bearer token), for test support code.

Test harnesses need a handful of raw calls — create, merge-patch, delete, list by label, read a status
subresource — with the HTTP status in hand (a test asserts on 403 and 422 as often as on success). The
kubernetes client raises on every non-2xx answer and types every object; this keeps the JSON as the
server sent it.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MERGE_PATCH = "application/merge-patch+json"


def api_path(resource: str, namespace: str | None, name: str = "", subresource: str = "") -> str:
    """`v1/pods` or `kubetune.io/v1alpha1/finetunejobs` (group/version/plural) -> the REST path."""
    group_version, plural = resource.rsplit("/", 1)
    prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


class KubeApi:
    """`request(method, path, body)` -> (HTTP status, JSON body) against `server` as the token's user."""

    def __init__(self, server: str, token: str, ca_file: Path | None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", timeout: float = 30
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = MERGE_PATCH if method == "PATCH" else content_type
        request = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload or b"{}")
            except json.JSONDecodeError:
                return error.code, {"message": payload.decode(errors="replace")}

    def get(self, resource: str, namespace: str | None, name: str, subresource: str = "") -> dict[str, Any] | None:
        code, body = self.request("GET", api_path(resource, namespace, name, subresource))
        return body if code == 200 else None

    def list(
        self, resource: str, namespace: str | None, labels: Mapping[str, str] | None = None, fields: str = ""
    ) -> list[dict[str, Any]]:
        query = {}
        if labels:
            query["labelSelector"] = ",".join(f"{k}={v}" for k, v in labels.items())
        if fields:
            query["fieldSelector"] = fields
        path = api_path(resource, namespace) + ("?" + urllib.parse.urlencode(query) if query else "")
        code, body = self.request("GET", path)
        assert code == 200, f"list {resource}: HTTP {code}: {body}"
        items: list[dict[str, Any]] = body.get("items") or []
        return sorted(items, key=lambda item: item["metadata"]["name"])

    def create(self, resource: str, namespace: str | None, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        return self.request("POST", api_path(resource, namespace), dict(body))

    def patch(
        self, resource: str, namespace: str | None, name: str, patch: Mapping[str, Any], subresource: str = ""
    ) -> tuple[int, dict[str, Any]]:
        return self.request("PATCH", api_path(resource, namespace, name, subresource), dict(patch))

    def delete(
        self, resource: str, namespace: str | None, name: str, options: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        return self.request("DELETE", api_path(resource, namespace, name), dict(options) if options else None)
