"""`python -m kubetune.worker [flags] -- <launcher command>`: the worker pod's command (kubetune.worker)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kubetune.api.invocation import ATTEMPT_ENV, EXIT_BAD_INPUT
from kubetune.api.worker import WORKER_TOKEN_ENV
from kubetune.worker.endpoint import SupervisorEndpoint
from kubetune.worker.supervisor import (
    SupervisorSettings,
    WorkerSupervisor,
    command_of,
    install_signal_handlers,
    supervisor_environment,
)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune.worker", description=__doc__)
    parser.add_argument("--port", type=int, help="the endpoint's TCP port (none: no endpoint, no orders)")
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=0.0,
        help="seconds a failed attempt waits for an order before the container ends with its failure "
        "(0: at once, the recreate path)",
    )
    parser.add_argument(
        "--grace-seconds", type=float, required=True, help="seconds a stopped launcher gets before SIGKILL"
    )
    parser.add_argument(
        "--termination-message-path", type=Path, required=True, help="where the trainer writes its result"
    )
    head = argv[: argv.index("--")] if "--" in argv else argv
    return parser.parse_args(head)


def main(argv: list[str]) -> int:
    try:
        command = command_of(argv)
    except ValueError as error:
        print(f"kubetune.worker: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = _arguments(argv)  # argparse's own words and exit code (2, EXIT_BAD_INPUT) for a wrong flag
    # Restarts in place are worth a line each; without them the container's log stays the launcher's (its
    # tail is the termination message when the trainer wrote none).
    quiet = args.hold_seconds == 0
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s kubetune.worker %(message)s"
    )
    attempt = os.environ.get(ATTEMPT_ENV, "")
    if not attempt.isdigit() or int(attempt) < 1:
        print(
            f"kubetune.worker: {ATTEMPT_ENV} must hold the pod's attempt (1, 2, ...), not {attempt!r}", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    settings = SupervisorSettings(
        command=command,
        first_attempt=int(attempt),
        termination_message_path=args.termination_message_path,
        hold_seconds=args.hold_seconds,
        grace_seconds=args.grace_seconds,
        reaps_orphans=os.getpid() == 1,  # the container's init
    )
    endpoint = None
    if args.port is not None:
        try:  # before the ranks start: a pod that cannot take orders must not train unsupervised
            endpoint = SupervisorEndpoint(os.environ.get(WORKER_TOKEN_ENV, ""), port=args.port)
        except OSError as error:
            print(
                f"kubetune.worker: cannot serve on port {args.port} ({error}); is another process using it?",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
    supervisor = WorkerSupervisor(settings, supervisor_environment())
    install_signal_handlers(supervisor)
    if endpoint is None:  # no orders: the container ends as the launcher does
        return supervisor.run()
    with endpoint.serving(supervisor):
        return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
