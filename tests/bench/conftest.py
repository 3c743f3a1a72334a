"""Make the repository's `bench` package importable in its tests.

`make bench` runs it as `python -m bench` from the repository root; pytest (importlib mode) does not
put the root on sys.path. It is appended, not prepended, so that the standard library still wins for
`operator` (the repository's operator/ folder is only importable as kubetune.operator).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.append(ROOT)
