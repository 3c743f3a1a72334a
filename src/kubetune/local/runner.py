"""`kubetune run FILE`: the operator's job, on one machine, with the operator's own decisions.

The runner is a level-triggered loop like the operator's reconcile: it observes the local ranks, asks
`kubetune.policies.reconcile.decide` what the job's status is and whether to launch, restart, back off,
fail or finish, writes `status.json` (the CRD's status shape) and acts. Each local rank plays the part
of one worker pod, so a rank that dies takes the whole gang down and the next attempt resumes from the
last checkpoint — exactly the cluster's semantics, from the same code. Ctrl-C (or SIGTERM) asks the ranks
to checkpoint and stop, and is recorded as a suspension: running the same command again resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Literal

import psutil

from kubetune.api.invocation import EXIT_BAD_INPUT, EXIT_FAILED, TrainerInvocation, free_port
from kubetune.api.job import FineTuneJob
from kubetune.api.status import FINISHED_PHASES, ConditionType, FineTuneJobStatus, Reason
from kubetune.api.training import Accelerator
from kubetune.api.validation import ManifestError, load_job
from kubetune.local import preflight
from kubetune.local.display import ProgressDisplay, read_snapshot
from kubetune.local.launch import AttemptOutcome, run_attempt
from kubetune.local.report import plot_losses, write_report
from kubetune.local.workdir import Workdir, WorkdirError, claim, resolve_paths
from kubetune.policies.observed import WorkerObservation, parse_termination_message
from kubetune.policies.preflight import AcceleratorChoice
from kubetune.policies.reconcile import Decision, decide
from kubetune.policies.status import find_condition
from kubetune.policies.threads import ENV as THREADS_ENV
from kubetune.policies.threads import threads_per_process

#: Failures that mean the input is wrong (exit 2, like any other bad input), not that training failed.
BAD_INPUT_REASONS = frozenset({Reason.INVALID_SPEC, Reason.DATA_ERROR, Reason.MODEL_ERROR})
#: Seconds between two status.json refreshes while an attempt runs.
STATUS_REFRESH_SECONDS = 2.0


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Supervisor:
    """The state of one `kubetune run` invocation."""

    job: FineTuneJob
    """The job as the policies see it: each local rank is one worker, and `status` is the memory."""
    workdir: Workdir
    metrics_port: int
    display: ProgressDisplay
    interrupted_by: int | None = None
    workers: list[WorkerObservation] = field(default_factory=list)

    @property
    def status(self) -> FineTuneJobStatus:
        return self.job.status or FineTuneJobStatus()

    def apply(self, decision: Decision) -> None:
        """Remember and publish a decision's status and events."""
        self.job = self.job.model_copy(update={"status": decision.status})
        write_status(self.workdir, decision.status)
        for event in decision.events:
            print(f"[{event.type}] {event.reason}: {event.message}", flush=True)
            append_event(self.workdir, {"event": event.reason, "type": event.type, "message": event.message})

    def decide_now(self) -> Decision:
        return decide(self.job, self.workers, now(), read_snapshot(self.workdir.progress))


def write_status(workdir: Workdir, status: FineTuneJobStatus) -> None:
    temporary = workdir.status.with_suffix(".tmp")
    temporary.write_text(json.dumps(status.to_wire(), indent=2) + "\n")
    os.replace(temporary, workdir.status)


def append_event(workdir: Workdir, record: dict[str, object]) -> None:
    with (workdir.root / "events.jsonl").open("a") as events:
        events.write(json.dumps({"time": now().isoformat(), **record}) + "\n")


def _rank_environment(invocation: TrainerInvocation, processes: int) -> dict[str, str]:
    threads = threads_per_process(processes, None, None, os.cpu_count())  # the machine's cores, shared out
    return invocation.env() | ({THREADS_ENV: str(threads)} if threads else {}) | {"PYTHONUNBUFFERED": "1"}


def _observe(outcome: AttemptOutcome, attempt: int, workdir: Workdir) -> list[WorkerObservation]:
    """Each rank as a worker; rank 0's result.json tells why the gang ended."""
    result_text = workdir.result.read_text() if workdir.result.exists() else None
    observations = []
    for rank_exit in outcome.exits:
        result = parse_termination_message(result_text) if rank_exit.rank == 0 else None
        state: Literal["succeeded", "failed"] = "succeeded" if rank_exit.exit_code == 0 else "failed"
        message = None if result else f"see {rank_exit.log_path}"
        observations.append(
            WorkerObservation(rank_exit.rank, attempt, state, rank_exit.exit_code, result=result, message=message)
        )
    return observations


def _run_one_attempt(supervisor: Supervisor, attempt: int, processes: int, config: Path) -> None:
    """Launch the gang of `attempt` in a thread; refresh status.json from rank 0's progress meanwhile."""
    workdir = supervisor.workdir
    for stale in (workdir.result, workdir.progress):
        stale.unlink(missing_ok=True)
    invocation = TrainerInvocation(
        config=str(config),
        workdir=str(workdir.root),
        checkpoint_dir=str(workdir.checkpoints),
        output_dir=str(workdir.output),
        metrics_port=supervisor.metrics_port,
        termination_message_path=str(workdir.attempt_logs(attempt) / "termination-message"),
        attempt=attempt,
        job_uid=workdir.job_uid,
        accelerator=supervisor.job.spec.distributed.accelerator,
    )
    trainer_args = invocation.argv()
    outcomes: list[AttemptOutcome] = []
    env = _rank_environment(invocation, processes)
    run_id = f"{supervisor.job.name}-{attempt}"
    logs = workdir.attempt_logs(attempt)
    launcher = threading.Thread(
        target=lambda: outcomes.append(
            run_attempt(run_id=run_id, processes=processes, trainer_args=trainer_args, log_folder=logs, env=env)
        ),
        name="gang",
    )
    supervisor.workers = [WorkerObservation(rank, attempt, "running") for rank in range(processes)]
    supervisor.display.start(attempt, supervisor.status.restarts)
    launcher.start()
    try:
        while launcher.is_alive():
            launcher.join(STATUS_REFRESH_SECONDS)
            if launcher.is_alive():
                supervisor.apply(supervisor.decide_now())
    finally:
        supervisor.display.stop()
    supervisor.workers = _observe(outcomes[0], attempt, workdir)
    step = read_snapshot(workdir.progress)
    append_event(
        workdir,
        {"event": "attempt-ended", "attempt": attempt, "exit_codes": [e.exit_code for e in outcomes[0].exits],
         "step": step.progress.step if step else None},
    )  # fmt: skip


def _forward_stop(supervisor: Supervisor) -> None:
    """Ctrl-C / SIGTERM: ask every rank to checkpoint and stop (the launcher runs off the main thread, so
    it installs no handlers of its own)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if supervisor.interrupted_by is None:
            print(f"\n{signal.Signals(signum).name}: asking the ranks to checkpoint and stop…", flush=True)
        supervisor.interrupted_by = signum
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _pick_metrics_port(port: int) -> int:
    if port == 0:
        return 0  # off
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            chosen = free_port()
            print(f"port {port} is busy; rank 0 serves metrics on {chosen} instead", flush=True)
            return chosen


def supervise(supervisor: Supervisor, processes: int) -> FineTuneJobStatus:
    """The reconcile loop, until the job finishes or is interrupted."""
    config = supervisor.workdir.manifest
    while True:
        if supervisor.interrupted_by is not None:
            stopped = supervisor.job.spec.model_copy(update={"suspend": True})
            supervisor.job = supervisor.job.model_copy(update={"spec": stopped})
        decision = supervisor.decide_now()
        supervisor.apply(decision)
        if decision.status.phase in FINISHED_PHASES or decision.status.phase == "Suspended":
            return decision.status
        if decision.plan.delete:
            supervisor.workers = []  # local ranks are gone once their attempt has ended
            continue
        if decision.plan.create:
            if decision.status.restarts or decision.plan.attempt > 1:
                append_event(supervisor.workdir, {"event": "restart", "attempt": decision.plan.attempt,
                                                  "step": (decision.status.progress.step if decision.status.progress else None)})  # fmt: skip
            _run_one_attempt(supervisor, decision.plan.attempt, processes, config)
            continue
        time.sleep(min(decision.check_again_in or 1.0, 30.0))


@dataclass(frozen=True)
class _Prepared:
    """A job checked against this machine, with the workdir it now owns."""

    job: FineTuneJob
    workdir: Workdir
    resuming: bool
    processes: int
    accelerator: AcceleratorChoice


def _prepare(args: argparse.Namespace) -> _Prepared:
    manifest = Path(args.file)
    job = resolve_paths(load_job(args.file), manifest)
    processes = args.processes or job.spec.distributed.workers * job.spec.distributed.processes_per_worker
    if processes < 1:
        raise WorkdirError("--processes: must be at least 1")
    workdir = Workdir(Path(args.workdir or Path("runs") / job.name).resolve())
    accelerator = preflight.check(job, manifest, workdir, processes)  # before the workdir is claimed
    return _Prepared(job, workdir, claim(workdir, job), processes, accelerator)


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        prepared = _prepare(args)
    except (ManifestError, WorkdirError, preflight.PreflightError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    job, workdir, resuming, processes = prepared.job, prepared.workdir, prepared.resuming, prepared.processes
    earlier = (
        FineTuneJobStatus.model_validate_json(workdir.status.read_text())
        if resuming and workdir.status.exists()
        else None
    )
    local = _as_local_gang(job, processes, prepared.accelerator.accelerator, earlier)
    port = _pick_metrics_port(args.metrics_port)
    if prepared.accelerator.notice:
        print(prepared.accelerator.notice)
    print(
        f"{'resuming' if resuming else 'starting'} FineTuneJob {job.name}: {processes} rank(s), workdir {workdir.root}"
    )
    if port:
        address = f"http://127.0.0.1:{port}"
        print(f"Prometheus metrics (rank 0): {address}/metrics  progress: {address}/progress", flush=True)
    else:
        print("Prometheus metrics: off (--metrics-port 0)", flush=True)
    supervisor = Supervisor(local, workdir, port, ProgressDisplay(workdir.progress, plain=args.plain))
    _forward_stop(supervisor)
    status = supervise(supervisor, processes)
    plot_losses(workdir, status)
    write_report(workdir, status, time.monotonic() - started)
    return _summarise(status, workdir, supervisor.interrupted_by)


def _as_local_gang(
    job: FineTuneJob, processes: int, accelerator: Accelerator, status: FineTuneJobStatus | None
) -> FineTuneJob:
    """Each local rank is one worker of the gang, for the policies' purposes, on the accelerator chosen
    for this machine (the workdir's manifest keeps what the user wrote)."""
    distributed = job.spec.distributed.model_copy(
        update={"workers": processes, "processes_per_worker": 1, "accelerator": accelerator}
    )
    spec = job.spec.model_copy(update={"distributed": distributed, "suspend": False})
    return job.model_copy(update={"spec": spec, "status": status})


def _summarise(status: FineTuneJobStatus, workdir: Workdir, interrupted_by: int | None) -> int:
    print(f"\n{status.phase}: {status.message or ''}")
    failed = find_condition(status, ConditionType.FAILED)
    bad_input = failed is not None and failed.status == "True" and failed.reason in BAD_INPUT_REASONS
    if status.phase == "Failed" and status.attempt and not bad_input:
        # Bad input names its fix in the message; anything else is explained by the ranks' own logs.
        print(f"what each rank did before it failed, with any traceback: {workdir.attempt_logs(status.attempt)}/")
    print(f"report: {workdir.report}\nstatus: {workdir.status}")
    if status.phase == "Succeeded":
        return 0
    if status.phase == "Suspended":
        print("run the same command again to resume from the last checkpoint")
        return 128 + (interrupted_by or signal.SIGINT)
    return EXIT_BAD_INPUT if bad_input else EXIT_FAILED
