"""In-memory copies of the objects the operator reads, indexed by the job they belong to.

The reconcile reads these instead of asking the API server (issue 16: at 1,000 jobs, per-job GETs and
LISTs every few seconds were 24-43 requests per job per minute). A `Store` is filled by a watch
(kubetune.operator.informer, or kopf's own watch of the jobs) and by the operator's own writes: the
answer to a create, patch or delete is put in at once, so the next reconcile sees what this one did
even before the watch delivers it ("read your own writes").

Order: an object is replaced only by a newer one. resourceVersions are opaque strings by contract, but
every Kubernetes API server in use (etcd3 storage) issues increasing integers, and client-go's own
informers rely on the same comparison for bookmarks; when either version is not an integer the newer
arrival wins, as a plain watch would have it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

from kubetune.operator.builders import JOB_LABEL

#: Deleted objects whose uids are remembered, so that a late answer to a write does not bring them back.
GONE_REMEMBERED = 50_000
#: (namespace, name) of one object.
ObjectKey = tuple[str, str]
#: (namespace, index value): the objects of one job (value: the job's name), or of one namespace ("").
IndexKey = tuple[str, str]


def object_key(obj: dict[str, Any]) -> ObjectKey:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "", metadata.get("name") or ""


def by_job_label(obj: dict[str, Any]) -> IndexKey:
    """Index of children: (namespace, their kubetune.io/job-name label)."""
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "", (metadata.get("labels") or {}).get(JOB_LABEL, "")


def by_namespace(obj: dict[str, Any]) -> IndexKey:
    """Index of namespace-wide objects (ResourceQuotas): (namespace, "")."""
    return (obj.get("metadata") or {}).get("namespace") or "", ""


def _version(obj: dict[str, Any]) -> int | None:
    value = (obj.get("metadata") or {}).get("resourceVersion")
    return int(value) if isinstance(value, str) and value.isdigit() else None


def is_older(candidate: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether `candidate` is an older state of `current` (same object, lower resourceVersion)."""
    if (candidate.get("metadata") or {}).get("uid") != (current.get("metadata") or {}).get("uid"):
        return False  # another object of that name (re-created): the arrival is the truth
    new, old = _version(candidate), _version(current)
    return new is not None and old is not None and new < old


def _same_state(candidate: dict[str, Any], current: dict[str, Any]) -> bool:
    new, old = candidate.get("metadata") or {}, current.get("metadata") or {}
    version = new.get("resourceVersion")
    return version is not None and version == old.get("resourceVersion") and new.get("uid") == old.get("uid")


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without managedFields (a third of a pod's size; nothing here reads them)."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict) and "managedFields" in metadata:
        obj = {**obj, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
    return obj


class Store:
    """Objects of one kind by (namespace, name), with an index (by job, or by namespace)."""

    def __init__(
        self,
        kind: str,
        index: Callable[[dict[str, Any]], IndexKey] = by_job_label,
        shape: Callable[[dict[str, Any]], dict[str, Any]] = slim,
    ) -> None:
        self.kind = kind
        self._index_of = index
        self._shape = shape
        """What is kept of each object (`slim` by default; Nodes keep only what the reconcile reads)."""
        self.revision = 0
        """Counts the changes to the stored objects, so a reader can tell that nothing changed since it looked."""
        self._objects: dict[ObjectKey, dict[str, Any]] = {}
        self._index: dict[IndexKey, dict[ObjectKey, dict[str, Any]]] = {}
        self._gone: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._objects.get((namespace, name))

    def indexed(self, namespace: str, value: str = "") -> list[dict[str, Any]]:
        """The objects of one job (value: its name), or of one namespace for a namespace-indexed store."""
        return list(self._index.get((namespace, value), {}).values())

    def object_keys(self) -> Iterable[ObjectKey]:
        return self._objects.keys()

    def objects(self) -> list[dict[str, Any]]:
        """Every stored object (a copy of the list, not of the objects)."""
        return list(self._objects.values())

    def upsert(self, obj: dict[str, Any]) -> bool:
        """Store `obj` unless a newer state of it is stored or it was deleted already (the answer to a
        delete can arrive after the watch said the object is gone); whether it was stored. The very state
        stored already (the watch's copy of what the operator wrote and recorded) is not stored again, and
        says False: it wakes no reconcile, which decided on it when it wrote it."""
        key = object_key(obj)
        current = self._objects.get(key)
        if current is not None and (is_older(obj, current) or _same_state(obj, current)):
            return False
        if (obj.get("metadata") or {}).get("uid") in self._gone:
            return False
        obj = self._shape(obj)
        if current is not None:
            self._unindex(key, current)
        self.revision += 1
        self._objects[key] = obj
        self._index.setdefault(self._index_of(obj), {})[key] = obj
        return True

    def remove(self, obj: dict[str, Any]) -> bool:
        """Forget `obj` (deleted); a newer object of that name (re-created since) stays. Whether it went."""
        key = object_key(obj)
        current = self._objects.get(key)
        if current is None or is_older(obj, current):
            return False
        uid = (obj.get("metadata") or {}).get("uid")
        if uid and (current.get("metadata") or {}).get("uid") not in (None, uid):
            return False
        self._unindex(key, current)
        del self._objects[key]
        self._bury(current)
        self.revision += 1
        return True

    def _bury(self, obj: dict[str, Any]) -> None:
        """Remember a deleted object's uid (the most recent GONE_REMEMBERED of them): never stored again."""
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            self._gone[uid] = None
            while len(self._gone) > GONE_REMEMBERED:
                self._gone.popitem(last=False)

    def replace(
        self, namespace: str | None, objects: list[dict[str, Any]], listed_at: str | None
    ) -> list[dict[str, Any]]:
        """A relist's answer (of one namespace, or all: None) replaces what is stored there; objects written
        after the list (resourceVersion above `listed_at`) stay. The objects whose state changed."""
        changed = [obj for obj in objects if self._differs(obj) and self.upsert(obj)]
        listed = {object_key(obj) for obj in objects}
        bound = int(listed_at) if listed_at and listed_at.isdigit() else None
        for key, current in list(self._objects.items()):
            if key in listed or (namespace is not None and key[0] != namespace):
                continue
            version = _version(current)
            if bound is not None and version is not None and version > bound:
                continue  # written by this operator after the list was taken
            self._unindex(key, current)
            del self._objects[key]
            self._bury(current)
            self.revision += 1
            changed.append(current)
        return changed

    def _differs(self, obj: dict[str, Any]) -> bool:
        current = self._objects.get(object_key(obj))
        return current is None or (current.get("metadata") or {}).get("resourceVersion") != (
            obj.get("metadata") or {}
        ).get("resourceVersion")

    def _unindex(self, key: ObjectKey, obj: dict[str, Any]) -> None:
        index = self._index_of(obj)
        bucket = self._index.get(index)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del self._index[index]
