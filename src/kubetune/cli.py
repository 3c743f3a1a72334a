"""The `kubetune` command: one entry point for every part of the product.

Arguments for every sub-command are declared here, but each command's implementation is imported only
when it runs: `kubetune validate` and `kubetune operator` must never pay for (or need) torch, and the
operator image does not have it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from kubetune.api.invocation import EXIT_BAD_INPUT, TrainerInvocation


def _crd(args: argparse.Namespace) -> int:
    from kubetune.api.crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from kubetune.api.validation import validate_files

    jobs, problems = validate_files(args.files)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_BAD_INPUT
    for job in jobs:
        print(f"ok: FineTuneJob {job.name}")
    return 0


def _lazy(module: str, function: str = "main") -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result: int = getattr(importlib.import_module(module), function)(args)
        return result

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition (YAML)")
    crd.set_defaults(handler=_crd)

    validate = commands.add_parser("validate", help="check FineTuneJob manifests; exit 2 on any problem")
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML files (multi-document); - for stdin")
    validate.set_defaults(handler=_validate)

    run = commands.add_parser("run", help="run a FineTuneJob on this machine, no cluster needed")
    run.add_argument("file", metavar="FILE", help="the FineTuneJob manifest")
    run.add_argument("--workdir", help="where outputs, checkpoints and logs go (default: runs/<job name>)")
    run.add_argument("--processes", type=int, help="local trainer processes (default: workers x processesPerWorker)")
    run.add_argument("--metrics-port", type=int, default=9400, help="rank 0's Prometheus port on localhost")
    run.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")
    run.set_defaults(handler=_lazy("kubetune.local.runner"))

    train = commands.add_parser("train", help="run one rank of a job (inside a pod, under torchrun)")
    TrainerInvocation.add_arguments(train)  # the contract both supervisors build their command lines from
    train.set_defaults(handler=_lazy("kubetune.trainer.main"))

    operator = commands.add_parser("operator", help="run the Kubernetes operator")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    operator.add_argument("--metrics-port", type=int, default=8080, help="operator Prometheus port")
    operator.add_argument("--health-port", type=int, default=8081, help="liveness/readiness endpoint port")
    operator.add_argument("--trainer-image", default=None, help="trainer image for jobs that set none")
    operator.add_argument(
        "--trainer-resources",
        default=None,
        metavar="JSON",
        help='default worker-pod resources for jobs that set no spec.resources, e.g. \'{"requests": {"cpu": "4"}}\'',
    )
    operator.set_defaults(handler=_lazy("kubetune.operator.main"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
