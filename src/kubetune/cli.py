"""The `kubetune` command: one entry point for every part of the product.

Arguments for every sub-command are declared here, but each command's implementation is imported only
when it runs: `kubetune validate` and `kubetune operator` must never pay for (or need) torch, and the
operator image does not have it.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kubetune.api.invocation import EXIT_BAD_INPUT, TrainerInvocation


def _crd(args: argparse.Namespace) -> int:
    from kubetune.api.crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml())
    return 0


def _validate(args: argparse.Namespace) -> int:
    from kubetune.api.validation import validate_files

    if args.policy:
        from kubetune.api.platform_policy import PolicyError, load_policy
        from kubetune.api.platform_rules import validate_files_against

        try:
            policy = load_policy(args.policy)
        except PolicyError as error:
            print(f"{error}\nthe platform policy is unusable: nothing was checked", file=sys.stderr)
            return EXIT_BAD_INPUT
        jobs, problems = validate_files_against(args.files, policy)
    else:
        jobs, problems = validate_files(args.files)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return EXIT_BAD_INPUT
    for job in jobs:
        print(f"ok: FineTuneJob {job.name}")
    return 0


#: The distributions `kubetune --version` reports, where installed (the core first).
DISTRIBUTIONS = ("kubetune", "kubetune-operator", "kubetune-trainer")
#: Kubernetes object names (DNS-1123 subdomain) and namespaces (DNS-1123 label).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def versions() -> str:
    """One line per installed distribution of the workspace: `kubetune 0.1.0`, ..."""
    from importlib import metadata

    lines = []
    for distribution in DISTRIBUTIONS:
        try:
            lines.append(f"{distribution} {metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            if distribution == "kubetune":
                lines.append("kubetune (not installed: run from a source tree)")
    return "\n".join(lines)


class _Version(argparse.Action):
    """`--version`: the versions are looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(versions())
        parser.exit()


def _object_name(text: str) -> str:
    if len(text) > 253 or not _NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kubernetes object name (lower-case a-z, 0-9, '-', '.')")
    return text


def _namespace(text: str) -> str:
    if len(text) > 63 or not _LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (lower-case a-z, 0-9, '-'; 63 at most)")
    return text


def _http_url(text: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} s is out of range (0.1 to 3600)")
    return value


def _status(args: argparse.Namespace) -> int:
    try:
        command = importlib.import_module("kubetune.client.status")  # by name, like _lazy: only when it runs
    except ModuleNotFoundError as error:
        if error.name not in ("kubernetes", "urllib3"):
            raise
        print("kubetune status needs the Kubernetes client: pip install 'kubetune[status]'", file=sys.stderr)
        return 1
    code: int = command.main(args)
    return code


def _share_or_off(text: str) -> float | None:
    """An argparse type: a share in (0, 1], or `off` (None)."""
    if text == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'off'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share: give a number above 0 and at most 1, or 'off'")
    return value


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: a number above zero (argparse names the flag in its message)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be above zero")
        return value

    parse.__name__ = kind.__name__
    return parse


def _leader_election_arguments(operator: argparse.ArgumentParser) -> None:
    election = operator.add_argument_group("leader election (several replicas: one leads, the others stand by)")
    election.add_argument(
        "--leader-elect", action="store_true", help="lead only while holding a coordination.k8s.io Lease (the chart's)"
    )
    election.add_argument(
        "--leader-election-lease", default="kubetune-operator", metavar="NAME", help="the Lease's name"
    )
    election.add_argument(
        "--leader-election-namespace",
        type=_namespace,
        default=None,
        metavar="NAMESPACE",
        help="the Lease's namespace (default: POD_NAMESPACE, the operator's own)",
    )
    election.add_argument(
        "--leader-election-identity",
        default="",
        metavar="NAME",
        help="this replica's name in the Lease and its requests' User-Agent (default: POD_NAME, else the host "
        "name), followed by a random suffix",
    )
    for flag, default, what in (
        ("--lease-duration", 10.0, "a Lease not renewed for this long may be taken by a standby"),
        ("--renew-deadline", 7.0, "the leader stops writing and exits this long after its last renewal started"),
        ("--retry-period", 2.0, "between renewals, and between a standby's tries"),
    ):
        election.add_argument(
            flag, type=_seconds, default=default, metavar="SECONDS", help=f"{what} (default {default:g})"
        )


def _lazy(module: str, function: str = "main") -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        result: int = getattr(importlib.import_module(module), function)(args)
        return result

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, help="print the installed kubetune distributions' versions")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition (YAML)")
    crd.set_defaults(handler=_crd)

    validate = commands.add_parser("validate", help="check FineTuneJob manifests; exit 2 on any problem")
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML files (multi-document); - for stdin")
    validate.add_argument(
        "--policy",
        metavar="FILE",
        help="also apply a platform policy: the ConfigMap the chart renders (templates/platform-policy.yaml), "
        "as the API server's admission policy does",
    )
    validate.set_defaults(handler=_validate)

    run = commands.add_parser("run", help="run a FineTuneJob on this machine, no cluster needed")
    run.add_argument("file", metavar="FILE", help="the FineTuneJob manifest")
    run.add_argument("--workdir", help="where outputs, checkpoints and logs go (default: runs/<job name>)")
    run.add_argument("--processes", type=int, help="local trainer processes (default: workers x processesPerWorker)")
    run.add_argument("--metrics-port", type=int, default=9400, help="rank 0's Prometheus port on localhost")
    run.add_argument("--plain", action="store_true", help="plain log lines even on a terminal")
    run.set_defaults(handler=_lazy("kubetune.local.runner"))

    status = commands.add_parser(
        "status",
        help="show a FineTuneJob in a cluster: the report `kubetune run` writes (exit 1 if not found)",
        description="Show a FineTuneJob in a cluster, read with your kubeconfig: phase and conditions, progress "
        "and ETA, losses, restarts, the evaluation and the recent events. Exit status: 0 when the job was found "
        "(any phase), 1 when it could not be read, 2 for wrong flags, 130 on Ctrl-C. Needs the kubernetes "
        "client: pip install 'kubetune[status]'.",
    )
    status.add_argument("name", metavar="NAME", type=_object_name, help="the FineTuneJob's name")
    status.add_argument(
        "--namespace", "-n", type=_namespace, help="its namespace (default: the kubeconfig context's namespace)"
    )
    status.add_argument("--watch", "-w", action="store_true", help="follow the job until it finishes")
    status.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)")
    status.add_argument("--context", help="kubeconfig context (default: the current one)")
    status.add_argument("--prometheus", metavar="URL", type=_http_url, help="Prometheus to chart the loss history from")
    status.add_argument(
        "--interval", type=_seconds, default=5.0, metavar="SECONDS", help="seconds between reads with -w (default 5)"
    )
    status.set_defaults(handler=_status)

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
    operator.add_argument(
        "--node-outage-share",
        type=_share_or_off,
        default=0.55,
        metavar="SHARE",
        help="share (0-1] of silent nodes, among the trainers' and all nodes, from which no worker of a silent node "
        "is force-deleted and jobs wait (MassNodeLoss); 'off': no brake (default 0.55, Kubernetes' unhealthy zone)",
    )
    operator.add_argument(
        "--protected-namespace",
        type=_namespace,
        action="append",
        default=[],
        metavar="NAMESPACE",
        help="run no job in this namespace (repeatable), besides kube-system, kube-public, kube-node-lease and the "
        "operator's own",
    )
    operator.add_argument(
        "--gang-network-policy",
        default=None,
        metavar="JSON",
        help="one NetworkPolicy per gang attempt admitting only that attempt's pods and, on 9400, the operator: "
        '{"operatorLabels": {...the operator pods\' labels}, "metricsFrom": [NetworkPolicyPeer, ...]} (the chart '
        "sets it; needs POD_NAMESPACE). Unset: no policy is made",
    )
    operator.add_argument(
        "--result-handover-seconds",
        type=float,
        default=120.0,
        help="seconds rank 0 keeps its whole result at GET /result for the operator to take (0 = no handover)",
    )
    operator.add_argument(
        "--progress-unreachable-after",
        type=float,
        default=60.0,
        help="seconds rank 0's progress must be unreachable before a job says ProgressUnavailable",
    )
    operator.add_argument(
        "--progress-write-interval",
        type=_positive(float),
        default=15.0,
        help="seconds between two progress writes to one job's status, at least, and between two reads of a "
        "rank 0 whose progress changes (default 15)",
    )
    operator.add_argument(
        "--progress-port",
        type=_positive(int),
        default=9400,
        help="port of rank 0's GET /progress on worker 0's pod IP (default 9400, the trainer's)",
    )
    operator.add_argument(
        "--progress-readers",
        type=_positive(int),
        default=16,
        help="reads of rank 0's progress in flight at once, across all jobs (default 16)",
    )
    operator.add_argument(
        "--api-writes-per-second",
        type=_positive(float),
        default=200.0,
        help="sustained API writes (creates, patches, deletes) per second; a job's launch is about 5 (default 200)",
    )
    operator.add_argument(
        "--api-write-burst",
        type=_positive(int),
        default=400,
        help="API writes allowed at once after a quiet period (default 400)",
    )
    operator.add_argument(
        "--reconcile-workers",
        type=_positive(int),
        default=64,
        help="jobs reconciled at once; each job by one worker at a time (default 64)",
    )
    operator.add_argument(
        "--kueue",
        nargs="?",
        const="on",
        default="auto",
        choices=("auto", "on", "off"),
        help="run jobs with spec.scheduling.queueName through Kueue Workloads (README: Kueue); auto (default): "
        "when Kueue's Workload API is served at start. Without it a queued job waits (QueueUnavailable)",
    )
    operator.add_argument(
        "--progress-max-bytes",
        type=_positive(int),
        default=64 * 1024,
        help="largest GET /progress body read from rank 0; a larger one is refused (default 65536)",
    )
    operator.add_argument(
        "--result-max-bytes",
        type=_positive(int),
        default=256 * 1024,
        help="largest GET /result body read from rank 0; a larger one is refused (default 262144)",
    )
    _leader_election_arguments(operator)
    operator.set_defaults(handler=_lazy("kubetune.operator.main"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
