"""What a control-plane fault scenario forces and reads beyond restarting a component
(`ControlPlane.restart`): etcd's compaction, and the API server's audit log.

A watch that resumes from a resourceVersion older than etcd's compaction is answered 410 Gone, and its
client must LIST again. Nothing in a short test makes that happen by itself (the API server compacts
every 5 minutes, and its watch cache serves recent versions for longer still), so the test forces it:
`compact()` compacts etcd at its current revision through the JSON gateway etcd serves on its client URL
(`/v3/kv/...`, the gRPC API as JSON: no etcd client library needed), and restarting kube-apiserver then
empties its watch cache, which starts again at that revision.

`audit()` reads the audit log (every request's metadata: user, user agent, verb, resource, URI, status)
that the control plane writes, so that a test can prove which requests a client made after a fault: a
LIST after an expired watch is the client's re-list.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import datetime
from typing import Any

from tests.support.controlplane import ControlPlane


def _etcd(plane: ControlPlane, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{plane.etcd_url}/v3/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def revision(plane: ControlPlane) -> int:
    """etcd's current revision (every resourceVersion the API server hands out is one of them)."""
    return int(_etcd(plane, "kv/range", {"key": "AA=="})["header"]["revision"])  # key "\0": any read will do


def compact(plane: ControlPlane) -> int:
    """Compact etcd at its current revision, physically (the old revisions are gone once it returns);
    returns that revision: a watch from any resourceVersion below it can no longer be served."""
    current = revision(plane)
    _etcd(plane, "kv/compaction", {"revision": str(current), "physical": True})
    return current


def audit(plane: ControlPlane, since: float, user_prefix: str = "") -> list[dict[str, Any]]:
    """The audit log's completed requests received after `since` (time.time()), of the users whose name
    starts with `user_prefix`, in order."""
    found = []
    with (plane.folder / "logs" / "audit.log").open() as log:
        for line in log:
            entry = json.loads(line)
            if entry.get("stage") != "ResponseComplete":
                continue
            if not entry.get("user", {}).get("username", "").startswith(user_prefix):
                continue
            received = datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if received >= since:
                found.append(entry)
    return found


def summary(entry: dict[str, Any]) -> str:
    """One audit entry as a line for a failure message: when, verb, object, status, user agent."""
    ref = entry.get("objectRef") or {}
    parts = (ref.get("namespace"), ref.get("resource"), ref.get("name"), ref.get("subresource"))
    code = (entry.get("responseStatus") or {}).get("code")
    when = entry.get("requestReceivedTimestamp", "")[11:23]
    return f"{when} {entry.get('verb')} {'/'.join(p for p in parts if p)} -> {code} ({entry.get('userAgent')})"
