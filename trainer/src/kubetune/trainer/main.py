"""`kubetune train`: one rank of a FineTuneJob, from the manifest to the exported model and exit code.

This is the thin shell around the trainer's parts: it reads the manifest, joins the gang, prepares data
and model, runs the loop, and turns whatever happened into one exit code (`ExitReason`) and, on rank 0,
`result.json` plus the termination message, and in a cluster the whole result handed to the operator
(kubetune.trainer.handover). All exception mapping goes through `errors.classify`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from kubetune.api.invocation import TrainerInvocation, attempt_from_environment, job_uid_from_environment
from kubetune.api.job import FineTuneJob
from kubetune.api.outcome import ExitReason, TrainerResult
from kubetune.policies.hang import Hang
from kubetune.trainer import distributed, fencing, gguf_cache, hang_watch, ownership, preflight
from kubetune.trainer.config import load_job, run_paths
from kubetune.trainer.errors import DataError, classify
from kubetune.trainer.handover import ResultHandover
from kubetune.trainer.hang_watch import HangWatch
from kubetune.trainer.loop import Trainer
from kubetune.trainer.outputs import Recorder
from kubetune.trainer.state import StopRequest
from kubetune.trainer.timeline import Timeline

log = logging.getLogger("kubetune.trainer")

#: Seconds a hung rank gives its result's writes (a stuck disk may be why the gang hangs) before it exits.
HUNG_WRITE_SECONDS = 30.0


def _configure_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _install_signal_handlers(stop: StopRequest) -> None:
    def handle(number: int, frame: FrameType | None) -> None:
        stop.request(signal.Signals(number).name)
        log.warning("%s received: checkpointing at the next step boundary", stop.signal_name)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _dtype(precision: str) -> Any:
    import torch

    # fp16 training keeps fp32 master weights in DeepSpeed, which casts the module itself.
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _prepare_data(
    job: FineTuneJob, manifest_dir: Path, rank: distributed.Rank, tokenizer: Any, recorder: Recorder
) -> Any:
    from kubetune.trainer import report as reports
    from kubetune.trainer.dataset import prepare

    with distributed.local_main_first(rank):
        data = prepare(job.spec.dataset, manifest_dir, job.spec.hyperparameters.seed, tokenizer)
    if rank.is_main:
        reports.write(data.report, recorder.workdir)
        log.info(reports.summary_line(data.report))
    reports.check_leakage(data.report)
    return data


@dataclass
class _Shell:
    """What main needs after the run, whatever happened: rank 0's recorder and metrics server."""

    recorder: Recorder | None = None
    server: Any = None
    handover: ResultHandover = field(default_factory=ResultHandover)
    """Rank 0's whole result at GET /result, once the run has ended (kubetune.trainer.handover)."""
    watch: HangWatch | None = None
    """This rank's hang watch (kubetune.trainer.hang_watch), once it has joined the gang."""


def _train(args: TrainerInvocation, job: FineTuneJob, stop: StopRequest, shell: _Shell) -> TrainerResult:
    timeline = Timeline(args.attempt or 1)
    paths = run_paths(args, job)
    job = preflight.check(job, paths)  # before anything slow: what cannot run here never will
    # Imported here, after the check (a refused run does not wait for DeepSpeed) and before the rendezvous,
    # so that the start-up timeline tells the imports (the check's own torch included) from the rendezvous.
    import deepspeed  # noqa: F401
    from transformers import set_seed

    from kubetune.trainer import engine as engines
    from kubetune.trainer import local_results
    from kubetune.trainer.metrics import Guard, TrainerMetrics, serve
    from kubetune.trainer.model import load_model, load_tokenizer
    from kubetune.trainer.packing import BatchPlan
    from kubetune.trainer.zero3 import ShardedLoading

    timeline.mark("imported")
    spec = job.spec
    rank = distributed.initialize(spec.distributed.cluster_accelerator)  # decided by the check
    timeline.mark("joined")
    _configure_logging(rank.rank)
    recorder = shell.recorder = Recorder(paths.workdir, enabled=rank.is_main)
    hang_timeout = spec.retry_policy.hang_timeout_seconds
    watch = shell.watch = hang_watch.start(rank, hang_timeout, args.attempt or 1, lambda hang: _hung(hang, args, shell))
    if "LOCAL_RANK" in os.environ:  # this run's results only (kubetune.trainer.local_results)
        local_results.forget(recorder.local_results(args.attempt or 1), int(os.environ["LOCAL_RANK"]))
    metrics = TrainerMetrics(job.name, job.namespace)
    if rank.is_main and args.metrics_port:
        guard = Guard(refused=metrics.unauthenticated)
        shell.server = serve(args.metrics_port, metrics.registry, recorder.progress_json, shell.handover, guard)
    recorder.publish(phase="Starting")
    # Before anything slow: the attempt holds the checkpoint folder, and an older gang still writing there
    # is fenced out from its next check (kubetune.trainer.fencing).
    fence = fencing.Fence(paths.checkpoints, fencing.epoch_of(args.job_uid, args.attempt), rank)
    fence.claim()
    # The folder's owner record; the earlier job whose checkpoints this one continues, for the Event.
    recorder.publish(resumed_from_job=ownership.claim(job, paths.checkpoints, rank.is_main, args.job_uid))
    set_seed(spec.hyperparameters.seed)
    base = paths.manifest.parent
    dtype = _dtype(spec.distributed.precision)
    # A GGUF file is converted once per job, by rank 0 (kubetune.trainer.gguf_cache); its folder is loaded.
    spec = spec.model_copy(
        update={"model": gguf_cache.converted(spec.model, base, paths.checkpoints, dtype, rank, fence)}
    )
    tokenizer = load_tokenizer(spec.model, base)
    data = _prepare_data(job, base, rank, tokenizer, recorder)
    timeline.mark("data")
    hp = spec.hyperparameters
    plan = BatchPlan(len(data.sequences), rank.world, hp.micro_batch_size, hp.gradient_accumulation_steps, hp.seed)
    if plan.steps_per_epoch == 0:
        raise DataError(
            f"{spec.dataset.train}: {plan.items} training sequence(s) are fewer than one global batch of "
            f"{plan.global_batch} ({rank.world} processes x microBatchSize x gradientAccumulationSteps)"
        )
    # ZeRO-3: transformers loads straight into shards while this lives (until training returns).
    sharding = ShardedLoading(engines.deepspeed_config(spec, rank.world), spec.distributed.zero_stage)
    model = load_model(spec, base, dtype)
    timeline.mark("model")
    if sharding.config is not None:
        sharded = sum(1 for p in model.parameters() if hasattr(p, "ds_numel"))
        log.info("ZeRO-3: %d of %d parameter tensors loaded already partitioned (zero.Init)", sharded,
                 sum(1 for _ in model.parameters()))  # fmt: skip
    engine = engines.create(spec, model, rank.world, plan.total_steps(hp.epochs, hp.max_steps))
    timeline.mark("engine")
    watch.watch_model(engine.module)
    trainer = Trainer(job, paths, rank, engine, tokenizer, data, plan, stop, metrics, recorder, fence, watch.motion)
    trainer.resume()
    timeline.mark("resumed")
    trainer.evaluate_base_model()
    trainer.evaluate_baselines()
    timeline.mark("evaluated")
    watch.motion.on_first_step = lambda: _started(timeline, recorder)
    log.info(
        "training %d steps (%d per epoch, global batch %d)",
        trainer.total_steps,
        plan.steps_per_epoch,
        plan.global_batch,
    )
    result = trainer.train()
    del sharding
    return result


def _started(timeline: Timeline, recorder: Recorder) -> None:
    """The first optimizer step is done: where the start-up went, in metrics.jsonl and the log (rank 0)."""
    timeline.mark("first_step")
    recorder.log_metrics(timeline.record())
    log.info(timeline.summary())


def _hung(hang: Hang, args: TrainerInvocation, shell: _Shell) -> None:
    """The gang hangs and this rank is the one to say so (called on the watch's thread, while the training
    thread waits for ever): write the result and end the process at once with `Hung` (retryable)."""
    log.error("%s: %s", ExitReason.HUNG.wire_name, hang.message)
    recorder = shell.recorder or Recorder(Path(args.workdir).resolve(), os.environ.get("RANK", "0") == "0")
    progress = recorder.snapshot.progress
    result = TrainerResult(
        outcome="Failed",
        reason=ExitReason.HUNG.wire_name,
        message=hang.message,
        retryable=True,
        step=hang.step,
        total_steps=progress.total_steps,
        metrics=recorder.snapshot.metrics,
    )
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None

    def write() -> None:
        with contextlib.suppress(Exception):
            recorder.finish(result, args.termination_message_path, local_rank, None, args.attempt or 1)

    # Whatever happens, the process ends with the hang's exit code, even if the writes hang on the same
    # stuck disk that hung the gang: they get a bounded time on a thread of their own.
    writer = threading.Thread(target=write, name="kubetune-hung-result", daemon=True)
    writer.start()
    writer.join(HUNG_WRITE_SECONDS)
    logging.shutdown()
    os._exit(ExitReason.HUNG.exit_code)


def _failure(reason: ExitReason | None, message: str, retryable: bool) -> TrainerResult:
    interrupted = reason is ExitReason.INTERRUPTED
    return TrainerResult(
        outcome="Interrupted" if interrupted else "Failed",
        reason=reason.wire_name if reason else "Error",
        message=message,
        retryable=retryable,
    )


def main(parsed: argparse.Namespace) -> int:
    """Run one rank; the process exit code (see kubetune.api.outcome)."""
    args = TrainerInvocation.from_args(parsed, attempt=attempt_from_environment(), job_uid=job_uid_from_environment())
    stop = StopRequest()
    _install_signal_handlers(stop)
    shell = _Shell()
    job: FineTuneJob | None = None
    try:
        job = load_job(args.config)
        distributed.prepare_environment(preflight.accelerator_of_this_rank(job))
        _configure_logging(int(os.environ.get("RANK", "0")))
        result = _train(args, job, stop, shell)
        code = 0
    except (Exception, KeyboardInterrupt) as error:  # every failure must become an exit code and a result
        micro = job.spec.hyperparameters.micro_batch_size if job else None
        reason, message, retryable = classify(error, micro)
        if reason is None:
            traceback.print_exc()
        else:
            log.error("%s: %s", reason.wire_name, message)
        result = _failure(reason, message, retryable)
        code = reason.exit_code if reason else 1
    if shell.watch is not None:  # this rank leaves the run: it can no longer be part of a hang
        shell.watch.finish()
    recorder = shell.recorder or Recorder(Path(args.workdir).resolve(), os.environ.get("RANK", "0") == "0")
    progress = recorder.snapshot.progress
    if code != 0:
        result = result.model_copy(update={"step": progress.step, "total_steps": progress.total_steps})
    snapshot = recorder.snapshot
    result = result.model_copy(update={"metrics": snapshot.metrics, "resumed_from_job": snapshot.resumed_from_job})
    # The handover needs the endpoint, and is pointless once SIGTERM asked the process to go.
    handing_over = shell.server is not None and args.result_handover_seconds > 0 and not stop.requested
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    handover = shell.handover if handing_over else None
    recorder.finish(result, args.termination_message_path, local_rank, handover, args.attempt or 1)
    log.info("finished: %s", result.wire())
    distributed.shutdown()
    if handing_over:
        log.info("serving the whole result at GET /result for up to %ss", args.result_handover_seconds)
        shell.handover.wait(args.result_handover_seconds, stop)
    if shell.server is not None and args.metrics_linger_seconds > 0:
        log.info("serving final metrics for up to %s s (SIGTERM ends the wait)", args.metrics_linger_seconds)
        stop.wait(args.metrics_linger_seconds)
        shell.server.shutdown()
        shell.server.server_close()
    return code
