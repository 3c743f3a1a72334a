"""Every reason a job's status or Events can carry is documented in the README's status section."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.status import Reason

README = Path(__file__).resolve().parents[3] / "README.md"
REASONS = sorted(value for name, value in vars(Reason).items() if name.isupper() and isinstance(value, str))


@pytest.mark.parametrize("reason", REASONS)
def test_every_reason_is_in_the_readme(reason: str) -> None:
    assert f"`{reason}`" in README.read_text(), f"document reason {reason} in README.md (the status section)"
