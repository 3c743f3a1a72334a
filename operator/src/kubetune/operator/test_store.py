"""The store keeps the newest state of each object, indexed by job, and never resurrects a deleted one."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator.builders import JOB_LABEL
from kubetune.operator.store import Store, by_namespace, is_older, slim


def pod(name: str, version: str, job: str = "demo", uid: str | None = None, namespace: str = "ns") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{name}",
            "resourceVersion": version,
            "labels": {JOB_LABEL: job},
            "managedFields": [{"manager": "kubectl"}],
        },
    }


@pytest.mark.parametrize(
    ("candidate", "current", "older"),
    [
        (pod("a", "5"), pod("a", "7"), True),
        (pod("a", "7"), pod("a", "5"), False),
        (pod("a", "7"), pod("a", "7"), False),
        (pod("a", "5", uid="new"), pod("a", "7"), False),  # a re-created namesake is never "older"
        (pod("a", "abc"), pod("a", "7"), False),  # not an integer: the arrival wins
    ],
)
def test_is_older(candidate: dict[str, Any], current: dict[str, Any], older: bool) -> None:
    assert is_older(candidate, current) is older


def test_upsert_keeps_the_newest_and_indexes_by_job() -> None:
    store = Store("pods")
    assert store.upsert(pod("a", "7"))
    assert not store.upsert(pod("a", "5"))  # an older event after a newer write
    assert (store.get("ns", "a") or {})["metadata"]["resourceVersion"] == "7"
    store.upsert(pod("b", "8", job="other"))
    assert [p["metadata"]["name"] for p in store.indexed("ns", "demo")] == ["a"]
    assert [p["metadata"]["name"] for p in store.indexed("ns", "other")] == ["b"]
    assert "managedFields" not in (store.get("ns", "a") or {})["metadata"]


def test_relabelled_object_moves_between_indexes() -> None:
    store = Store("pods")
    store.upsert(pod("a", "1", job="one"))
    store.upsert(pod("a", "2", job="two"))
    assert store.indexed("ns", "one") == [] and len(store.indexed("ns", "two")) == 1


def test_a_deleted_object_is_not_brought_back_by_a_late_write_answer() -> None:
    store = Store("pods")
    store.upsert(pod("a", "3"))
    assert store.remove(pod("a", "4"))
    assert not store.upsert(pod("a", "3"))  # the answer to our DELETE, after the watch's DELETED
    assert store.get("ns", "a") is None and store.indexed("ns", "demo") == []
    assert store.upsert(pod("a", "9", uid="recreated"))  # a new object of that name is welcome


def test_remove_of_another_uid_keeps_the_newer_namesake() -> None:
    store = Store("pods")
    store.upsert(pod("a", "9", uid="new"))
    assert not store.remove(pod("a", "4", uid="old"))
    assert store.get("ns", "a") is not None


def test_replace_removes_what_the_list_lacks_but_keeps_later_writes() -> None:
    store = Store("pods")
    for name, version in (("gone", "2"), ("kept", "3"), ("written-after", "12")):
        store.upsert(pod(name, version))
    store.upsert(pod("elsewhere", "4", namespace="other"))
    changed = store.replace("ns", [pod("kept", "3"), pod("new", "9")], listed_at="10")
    assert sorted(p["metadata"]["name"] for p in changed) == ["gone", "new"]
    assert sorted(name for _, name in store.object_keys()) == ["elsewhere", "kept", "new", "written-after"]


def test_replace_of_all_namespaces() -> None:
    store = Store("pods")
    store.upsert(pod("elsewhere", "4", namespace="other"))
    store.replace(None, [], listed_at="10")
    assert len(store) == 0


def test_namespace_index() -> None:
    store = Store("resourcequotas", by_namespace)
    store.upsert({"metadata": {"name": "q", "namespace": "ns", "uid": "1", "resourceVersion": "1"}})
    assert len(store.indexed("ns")) == 1 and store.indexed("other") == []


def test_slim_leaves_the_original_alone() -> None:
    original = pod("a", "1")
    assert "managedFields" not in slim(original)["metadata"]
    assert "managedFields" in original["metadata"]


def test_the_state_stored_already_is_not_a_change() -> None:
    """The watch's copy of a write the operator recorded wakes nothing; a newer state or a namesake does."""
    store = Store("Pod")
    assert store.upsert(pod("a", "5"))
    assert not store.upsert(pod("a", "5"))  # (recorded from the write's answer, then seen on the watch)
    assert store.upsert(pod("a", "6"))
    assert store.upsert(pod("a", "6", uid="another"))  # re-created under the same name
