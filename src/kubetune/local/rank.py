"""Entry point of one local rank: `python -m kubetune.local.rank train ...` (TrainerInvocation.argv()).

The elastic launcher redirects each rank's stdout to its log file; this joins stderr (where logging
goes) to the same file so that a rank has one log, in order. Ctrl-C reaches every process in the
terminal's process group, ranks included: it is turned into SIGTERM, which the trainer answers by
checkpointing and stopping, exactly as a pod does on deletion.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType


def _as_sigterm(signum: int, frame: FrameType | None) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    os.dup2(sys.stdout.fileno(), sys.stderr.fileno())
    signal.signal(signal.SIGINT, _as_sigterm)
    from kubetune.cli import main as kubetune_main

    return kubetune_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
