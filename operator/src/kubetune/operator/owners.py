"""Whose object is it: the ownership checks the operator makes before it touches an object it did not
just create.

A child's name (the job's Service and ConfigMap, an attempt's pods and NetworkPolicy) may already be
taken. An object of this very job is the operator's (an earlier reconcile made it); one that a deleted
FineTuneJob of the same name controls is that job's leftover, which the garbage collector removes anyway,
so the operator deletes it (with its uid as precondition) and creates its own afterwards. Anything else
is someone's own object: the operator never deletes it, because a job's author would otherwise delete,
through the operator, objects their own RBAC may not delete (a Service named as their job, say). The job
fails instead, naming the object (reason NameTaken).
"""

from __future__ import annotations

from typing import Any

#: The API group of the objects whose children the operator may clear (FineTuneJob's).
JOB_GROUP = "kubetune.io"
JOB_KIND = "FineTuneJob"


def owner_uids(obj: dict[str, Any]) -> set[str]:
    """The uids of an object's owners."""
    return {ref.get("uid", "") for ref in obj.get("metadata", {}).get("ownerReferences") or []}


def controlled_by_a_job(obj: dict[str, Any]) -> bool:
    """Whether a FineTuneJob is the object's controller (it is, or was, a job's child)."""
    return any(
        ref.get("controller")
        and ref.get("kind") == JOB_KIND
        and str(ref.get("apiVersion", "")).startswith(f"{JOB_GROUP}/")
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


class StaleObjectError(Exception):
    """A child's name is taken by an object that belongs to another owner: typically a deleted job of the
    same name whose children the garbage collector has not removed yet."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name} belongs to another (deleted) job of the same name; waiting for its removal")
        self.kind = kind
        self.name = name


class ForeignObjectError(Exception):
    """A child's name is taken by an object no FineTuneJob controls: it is never deleted (module docstring)."""

    def __init__(self, kind: str, namespace: str, name: str) -> None:
        super().__init__(
            f"the {kind} {namespace}/{name}, which this job's {kind} would be named, exists and is not a FineTuneJob's "
            "(the operator deletes only its own objects): rename the job, or delete that object if it is no longer "
            "needed, and apply the job again"
        )
        self.kind = kind
        self.name = name
