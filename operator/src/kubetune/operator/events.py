"""Kubernetes Events about jobs, posted through the operator's own API door (kubetune.operator.kube).

Why not kopf's `kopf.event`: kopf posts from its own client, outside the leader's write fence and with
its own User-Agent, so a replica that lost the Lease could still post an Event it queued before, and the
audit log could not tell the two replicas' posts apart. Here every Event is one fenced, rate-limited
write like any other, posted in the background (a reconcile never waits on, nor fails for, an Event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubetune.operator.kube import Kube
from kubetune.operator.lease import NotLeading
from kubetune.policies.status import Event

logger = logging.getLogger(__name__)

#: The Events' source: who says it, as `kubectl describe` shows.
COMPONENT = "kubetune-operator"
#: Longest message a v1 Event carries (the API server refuses longer ones).
MESSAGE_LIMIT = 1024


def event_manifest(body: Mapping[str, Any], event: Event, instance: str, now: datetime) -> dict[str, Any]:
    """The v1 Event about the object `body` (a FineTuneJob as the API server returned it)."""
    metadata = body.get("metadata") or {}
    namespace = metadata.get("namespace") or "default"
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    message = event.message if len(event.message) <= MESSAGE_LIMIT else event.message[: MESSAGE_LIMIT - 1] + "…"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata.get('name', 'job')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": metadata.get("name"),
            "namespace": namespace,
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": message,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """`post(body, event)` (the reconciler's EventPoster) sends the Event in the background."""

    def __init__(self, kube: Kube, instance: str) -> None:
        self.kube = kube
        self.instance = instance or COMPONENT
        self._sending: set[asyncio.Task[None]] = set()

    def post(self, body: Mapping[str, Any], event: Event) -> None:
        manifest = event_manifest(body, event, self.instance, datetime.now(UTC))
        task = asyncio.get_running_loop().create_task(self._send(manifest))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, manifest: dict[str, Any]) -> None:
        try:
            await self.kube.create_event(manifest)
        except NotLeading:
            pass  # a replica that lost the Lease says nothing more
        except Exception as error:  # an Event is never worth failing a reconcile for
            logger.warning("could not post the Event %s: %s", manifest["reason"], error)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait (a bounded time) for the Events being sent: at stop, so that the last ones are not lost."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)
