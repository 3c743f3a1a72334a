"""The claims check before a launch: access modes x workers -> fail, warn or launch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubetune.api.status import ConditionType, Reason
from kubetune.policies.reconcile import decide
from kubetune.policies.status import find_condition
from kubetune.policies.storage import (
    ROX,
    RWO,
    RWOP,
    RWX,
    ClaimObservation,
    StorageVerdict,
    apply_to_launch,
    check_claims,
    claims_of,
)
from tests.support.builders import JobBuilder, a_cpu_gang

pytestmark = pytest.mark.timeout(10)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def gang(workers: int) -> JobBuilder:
    """Training data on claim `data` (read), checkpoints on claim `ckpt` (written)."""
    return a_cpu_gang("demo", workers=workers)


def claim(name: str, *modes: str) -> ClaimObservation:
    return ClaimObservation(name, frozenset(modes))


def verdict_of(workers: int, data: tuple[str, ...] | None, ckpt: tuple[str, ...] | None) -> StorageVerdict:
    observed = {
        "data": claim("data", *data) if data is not None else None,
        "ckpt": claim("ckpt", *ckpt) if ckpt is not None else None,
    }
    return check_claims(gang(workers).to_job().spec, observed)


@pytest.mark.parametrize(
    ("workers", "data", "ckpt", "failure", "warnings"),
    [
        (2, (RWX,), (RWX,), None, []),
        (2, (ROX,), (RWX,), None, []),
        (1, (RWOP,), (RWOP,), None, []),  # one pod may use a ReadWriteOncePod claim
        (1, (RWO,), (RWO,), None, []),
        (2, (RWX,), (RWOP,), Reason.CLAIM_NOT_SHAREABLE, []),
        (2, (RWOP,), (RWX,), Reason.CLAIM_NOT_SHAREABLE, []),  # read-only mounts count too
        (2, (RWX,), (RWO,), None, [Reason.CLAIM_SINGLE_NODE]),
        (2, (RWO, ROX), (RWX,), None, [Reason.CLAIM_SINGLE_NODE]),  # RWO refuses a second node's attach
        (2, (RWO, RWX), (RWX, RWO), None, []),  # not attached per node (NFS and the like)
        (2, (RWO,), (RWO,), None, [Reason.CLAIM_SINGLE_NODE, Reason.CLAIM_SINGLE_NODE]),
        (1, (RWX,), (ROX,), None, [Reason.CLAIM_READ_ONLY]),
        (1, (ROX,), (RWX,), None, []),  # read-only data on a read-only claim is fine
        (2, None, (RWX,), None, [Reason.CLAIM_NOT_FOUND]),
        (2, (RWX,), (), None, []),  # no modes known: nothing to judge
    ],
)
def test_verdict(
    workers: int,
    data: tuple[str, ...] | None,
    ckpt: tuple[str, ...] | None,
    failure: str | None,
    warnings: list[str],
) -> None:
    verdict = verdict_of(workers, data, ckpt)
    assert (verdict.failure[0] if verdict.failure else None) == failure
    assert [w.reason for w in verdict.warnings] == warnings
    assert all(w.type == "Warning" for w in verdict.warnings)


def test_messages_name_the_claim_and_the_fix() -> None:
    failure = verdict_of(2, (RWX,), (RWOP,)).failure
    assert failure is not None
    assert "`ckpt` is ReadWriteOncePod" in failure[1] and "2 worker pods" in failure[1]
    assert "ReadWriteMany" in failure[1] and "`distributed.workers: 1`" in failure[1]
    (warning,) = verdict_of(2, (RWX,), (RWO,)).warnings
    assert "`ckpt` is ReadWriteOnce" in warning.message and "Multi-Attach" in warning.message
    assert "ReadWriteMany" in warning.message
    (missing,) = verdict_of(2, None, (RWX,)).warnings
    assert "`data` does not exist" in missing.message and "schedulingTimeoutSeconds" in missing.message


def test_claims_that_could_not_be_read_are_not_judged() -> None:
    assert check_claims(gang(2).to_job().spec, {}) == StorageVerdict()


def test_claims_of_the_spec() -> None:
    spec = gang(2).model("pvc://models/base").storage(output="pvc://ckpt/out").to_job().spec
    assert claims_of(spec) == {"models": False, "data": False, "ckpt": True}


@pytest.mark.parametrize(
    ("manifest", "modes"),
    [
        ({"metadata": {"name": "c"}, "spec": {"accessModes": [RWO]}}, {RWO}),  # unbound: as requested
        (
            {"metadata": {"name": "c"}, "spec": {"accessModes": [RWO]}, "status": {"accessModes": [RWX, RWO]}},
            {RWX, RWO},
        ),
        ({"metadata": {"name": "c"}}, set()),
    ],
)
def test_claim_observation_prefers_the_bound_volume(manifest: dict[str, object], modes: set[str]) -> None:
    assert ClaimObservation.from_manifest(manifest) == ClaimObservation("c", frozenset(modes))


def test_a_failure_replaces_the_launch_with_a_failed_job() -> None:
    job = gang(2).to_job()
    launch = decide(job, [], T0)
    assert launch.plan.create == (0, 1)
    decision = apply_to_launch(job, [], launch, verdict_of(2, (RWX,), (RWOP,)), T0)
    assert decision.status.phase == "Failed" and decision.plan.create == ()
    failed = find_condition(decision.status, ConditionType.FAILED)
    assert failed is not None and failed.reason == Reason.CLAIM_NOT_SHAREABLE
    assert [e.reason for e in decision.events] == [Reason.CLAIM_NOT_SHAREABLE]


def test_warnings_go_with_the_launch_into_events_and_a_condition() -> None:
    job = gang(2).to_job()
    launch = decide(job, [], T0)
    decision = apply_to_launch(job, [], launch, verdict_of(2, (RWO,), (RWO,)), T0)
    assert decision.plan == launch.plan and decision.status.phase == launch.status.phase
    assert [e.reason for e in decision.events] == [e.reason for e in launch.events] + [Reason.CLAIM_SINGLE_NODE] * 2
    warning = find_condition(decision.status, ConditionType.STORAGE_WARNING)
    assert warning is not None and (warning.status, warning.reason) == ("True", Reason.CLAIM_SINGLE_NODE)
    assert "`ckpt` is ReadWriteOnce" in warning.message and "`data` is ReadWriteOnce" in warning.message


def test_a_launch_without_warnings_clears_the_condition() -> None:
    job = gang(2).to_job()
    launch = decide(job, [], T0)
    assert apply_to_launch(job, [], launch, StorageVerdict(), T0) is launch  # never warned: nothing to clear
    warned = apply_to_launch(job, [], launch, verdict_of(2, None, (RWX,)), T0)
    later = apply_to_launch(job, [], warned, StorageVerdict(), T0)
    cleared = find_condition(later.status, ConditionType.STORAGE_WARNING)
    assert cleared is not None and (cleared.status, cleared.reason) == ("False", Reason.CLAIMS_USABLE)
