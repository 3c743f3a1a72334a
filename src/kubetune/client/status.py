"""`kubetune status NAME [-n NAMESPACE] [-w]`: the report `kubetune run` writes, for a job in a cluster.

One read of the job (and of its events) renders the report of `kubetune.view.report` for a terminal.
With `-w` it reads again every `--interval` seconds until the job has Succeeded or Failed: on a terminal
the report is redrawn in place; elsewhere (a pipe, a CI log) the report is printed once, then one line
whenever the phase, the step, the losses or the restarts change, then the final report. Failed reads
while following are retried (at most `WATCH_FAILURES` in a row); a job that disappears ends it.

The loss chart needs a history the status does not keep (it holds the latest losses only): with
`--prometheus URL` it is the job's `kubetune_train_loss` and `kubetune_eval_loss` series; while following
with `-w`, the losses of each status seen; otherwise the report says how to get one.

Exit status: 0 when the job was found (whatever its phase), 1 when it could not be read (a sentence says
why and what to check), 2 for wrong flags (argparse, a missing --kubeconfig file or --context), 130
on Ctrl-C. No traceback reaches the user (KUBETUNE_DEBUG=1 shows one for an unexpected error).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import ValidationError

from kubetune.api.status import FINISHED_PHASES, FineTuneJobStatus
from kubetune.client import cluster, prometheus
from kubetune.client.cluster import ClusterError, Connection
from kubetune.view.chart import LossSeries
from kubetune.view.report import EventRecord, JobReport, progress_line, report_lines

#: Failed reads in a row that end `-w`.
WATCH_FAILURES = 5
#: Points kept per loss series while following (the chart draws fewer).
MAX_SEEN_POINTS = 10_000
EXIT_INTERRUPTED = 130
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time of the API (`2026-01-01T10:00:00Z`, with or without fractions), or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def event_record(event: dict[str, Any]) -> EventRecord:
    """A core/v1 Event as the report shows it: its latest time, type, reason, message and count."""
    moment = next(
        filter(None, map(parse_time, (event.get("lastTimestamp"), event.get("eventTime"),
                                      event.get("firstTimestamp"), (event.get("metadata") or {}).get("creationTimestamp")))),
        None,
    )  # fmt: skip
    count = event.get("count") or (event.get("series") or {}).get("count") or 1
    return EventRecord(
        type=str(event.get("type") or "Normal"),
        reason=str(event.get("reason") or "-"),
        message=str(event.get("message") or ""),
        time=moment,
        count=int(count),
    )


def events_in_order(events: list[dict[str, Any]]) -> list[EventRecord]:
    records = [event_record(e) for e in events]
    return sorted(records, key=lambda r: r.time or datetime.min.replace(tzinfo=UTC))


def _drop(data: Any, location: tuple[int | str, ...]) -> None:
    for key in location[:-1]:
        data = data[key]
    del data[location[-1]]


def lenient_status(raw: dict[str, Any] | None) -> tuple[FineTuneJobStatus, list[str]]:
    """The status, leaving out fields this version of kubetune does not know (a newer operator may write
    them): (status, the dotted paths left out). Any other mismatch raises ValidationError."""
    data = copy.deepcopy(raw or {})
    ignored: list[str] = []
    while True:
        try:
            return FineTuneJobStatus.model_validate(data), ignored
        except ValidationError as error:
            extras = [e["loc"] for e in error.errors() if e["type"] == "extra_forbidden"]
            if not extras:
                raise
            for location in sorted(extras, key=len, reverse=True):
                _drop(data, location)
                ignored.append(".".join(map(str, location)))


@dataclass
class Observation:
    """One read of the job: its status, and its events (or why they are missing)."""

    job: dict[str, Any]
    status: FineTuneJobStatus
    ignored: list[str] = field(default_factory=list)
    events: list[EventRecord] | None = None
    events_note: str | None = None


class Reader:
    """Reads one job and its events through a connection; failures become `ClusterError` sentences."""

    def __init__(self, connection: Connection, namespace: str, name: str, namespace_from_context: bool) -> None:
        self.connection, self.namespace, self.name = connection, namespace, name
        self.namespace_from_context = namespace_from_context

    def __call__(self) -> Observation:
        try:
            job = cluster.read_job(self.connection, self.namespace, self.name)
        except cluster.REQUEST_ERRORS as error:
            raise cluster.explain(
                error, self.connection, self.namespace, self.name, self.namespace_from_context
            ) from error
        try:
            status, ignored = lenient_status(job.get("status"))
        except ValidationError as error:
            first = error.errors()[0]
            raise ClusterError(
                f"the status of FineTuneJob {self.namespace}/{self.name} does not fit this kubetune's API "
                f"(status.{'.'.join(map(str, first['loc']))}: {first['msg']}): compare `kubetune --version` "
                "with the operator's version and install the same."
            ) from error
        observation = Observation(job, status, ignored)
        uid = (job.get("metadata") or {}).get("uid")
        try:
            observation.events = events_in_order(cluster.read_events(self.connection, self.namespace, self.name, uid))
        except cluster.REQUEST_ERRORS as error:
            reason = cluster.explain(error, self.connection, self.namespace, self.name, False)
            code = getattr(error, "status", None)
            observation.events_note = (
                f"the events are not readable (403 Forbidden): ask for `list` on events in namespace {self.namespace}."
                if code == 403
                else f"the events could not be read: {reason}"
            )
        return observation


class SeenLosses:
    """The losses of the statuses seen while following: a history the status does not keep. The train
    loss is recorded at each new step; the eval loss only when it changes (a new evaluation), at the step
    it was first seen (the status does not say at which step it was measured)."""

    def __init__(self) -> None:
        self.train: dict[int, float] = {}
        self.eval: dict[int, float] = {}

    def add(self, status: FineTuneJobStatus) -> None:
        if status.progress is None or status.metrics is None or not status.progress.step:
            return
        step, metrics = status.progress.step, status.metrics
        if metrics.train_loss is not None and len(self.train) < MAX_SEEN_POINTS:
            self.train[step] = metrics.train_loss
        last_eval = self.eval[max(self.eval)] if self.eval else None
        if metrics.eval_loss is not None and metrics.eval_loss != last_eval and len(self.eval) < MAX_SEEN_POINTS:
            self.eval.setdefault(step, metrics.eval_loss)

    def series(self) -> list[LossSeries]:
        return [
            LossSeries(name, tuple((float(step), value) for step, value in sorted(seen.items())))
            for name, seen in (("train loss", self.train), ("eval loss", self.eval))
        ]


@dataclass
class Renderer:
    """Turns an observation into the report for a terminal, with the loss history it can get."""

    namespace: str
    name: str
    prometheus_url: str | None = None
    seen: SeenLosses | None = None
    fetch: prometheus.Fetch = prometheus.fetch_json

    def losses(self, observation: Observation, now: datetime) -> tuple[list[LossSeries], str, str | None]:
        """(series, where they come from, a note)."""
        if self.prometheus_url:
            status, metadata = observation.status, observation.job.get("metadata") or {}
            start = status.start_time or parse_time(metadata.get("creationTimestamp")) or now
            end = status.completion_time.timestamp() + 60 if status.completion_time else now.timestamp()
            try:
                series = prometheus.loss_history(
                    self.prometheus_url, self.namespace, self.name, start.timestamp(), end, self.fetch
                )
            except prometheus.PrometheusError as error:
                return [], "", f"No loss history from Prometheus at {self.prometheus_url}: {error}."
            if not any(s.points for s in series):
                return [], "", f"Prometheus at {self.prometheus_url} has no loss of this job (yet)."
            return series, f"Prometheus at {self.prometheus_url}", None
        if self.seen is not None:
            series = self.seen.series()
            if not any(s.points for s in series):
                return [], "", "The chart grows as the job reports losses (one point per status seen)."
            return series, "seen while following, one point per status", None
        return (
            [],
            "",
            "The status holds only the latest losses (above): `--prometheus URL` charts their history from "
            "the chart's Prometheus, `-w` charts them as the job goes.",
        )

    def __call__(self, observation: Observation, now: datetime) -> list[str]:
        if self.seen is not None:
            self.seen.add(observation.status)
        losses, source, note = self.losses(observation, now)
        extra = []
        if observation.ignored:
            extra.append(("Left out", f"status fields this kubetune does not know: {', '.join(observation.ignored)}"))
        report = JobReport(
            title=f"FineTuneJob {self.namespace}/{self.name}",
            status=observation.status,
            markdown=False,
            now=now,
            losses=losses,
            losses_source=source,
            losses_note=note,
            events=observation.events,
            events_note=observation.events_note,
            extra=tuple(extra),
        )
        return report_lines(report)


def _now() -> datetime:
    return datetime.now(UTC)


def follow(
    take: Callable[[], Observation],
    render: Callable[[Observation, datetime], list[str]],
    out: TextIO,
    err: TextIO,
    interval: float,
    redraw: bool,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], datetime] = _now,
) -> int:
    """Read and show the job until it has finished (see the module docstring); the exit status."""
    failures, last_line, first = 0, "", True
    while True:
        try:
            observation = take()
        except ClusterError as error:
            failures += 1
            if first or error.not_found or error.code != cluster.EXIT_NOT_READ or failures >= WATCH_FAILURES:
                raise
            print(f"kubetune status: {error} (retrying in {interval:g} s)", file=err, flush=True)
            sleep(interval)
            continue
        failures = 0
        finished = observation.status.phase in FINISHED_PHASES
        lines = render(observation, now())
        if redraw:
            out.write(CLEAR_SCREEN + "\n".join(lines) + "\n")
        elif first or finished:
            out.write(("" if first else "\n") + "\n".join(lines) + "\n")
        else:
            line = progress_line(observation.status)
            if line != last_line:
                out.write(f"{now().strftime('%H:%M:%S')} {line}\n")
            last_line = line
        out.flush()
        if finished:
            return 0
        if first and not redraw:
            last_line = progress_line(observation.status)
            out.write(f"\nfollowing until the job finishes (Ctrl-C stops), every {interval:g} s:\n")
            out.flush()
        first = False
        sleep(interval)


def show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The command, once connected; raises ClusterError for the caller to print."""
    connection = cluster.connect(args.kubeconfig, args.context)
    try:
        namespace = args.namespace or connection.namespace
        take = Reader(connection, namespace, args.name, namespace_from_context=args.namespace is None)
        render = Renderer(namespace, args.name, args.prometheus, SeenLosses() if args.watch else None)
        if not args.watch:
            out.write("\n".join(render(take(), _now())) + "\n")
            return 0
        return follow(take, render, out, err, args.interval, redraw=out.isatty())
    finally:
        connection.close()


def main(args: argparse.Namespace) -> int:
    """`kubetune status`: see the module docstring."""
    out, err = sys.stdout, sys.stderr
    try:
        return show(args, out, err)
    except ClusterError as error:
        print(f"kubetune status: {error}", file=err)
        return error.code
    except KeyboardInterrupt:
        print(f"\nkubetune status: stopped following FineTuneJob {args.name}", file=err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more to say, and nothing to flush at exit
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    except Exception as error:
        if os.environ.get("KUBETUNE_DEBUG") == "1":
            raise
        print(
            f"kubetune status: unexpected {type(error).__name__}: {error} (KUBETUNE_DEBUG=1 shows where; please "
            "report it with `kubetune --version`).",
            file=err,
        )
        return 1
