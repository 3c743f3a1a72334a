"""Every Prometheus metric the trainer publishes, defined here and recorded through one-liners.

Rank 0 serves them with prometheus-client from its own registry (no process/platform collectors: the
kubelet and node exporters own those) on `--metrics-port`, together with `GET /progress`, the latest
`ProgressSnapshot` as JSON, which the operator polls, and `/result`, the whole result once the run has
ended (kubetune.trainer.handover). Names and types follow the catalogue in
`kubetune.monitoring.metrics` (the dashboard and alerts are written against it). Labels are
`finetunejob` and `namespace` (and `split`, train or validation, on DPO's reward gauges): `job` belongs
to Prometheus' scrape job, and a step label would create a series per step. Units are base units (seconds, bytes, ratios 0-1); counters end in `_total`.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from kubetune.api.invocation import RANK0_TOKEN_ENV
from kubetune.trainer.handover import ResultHandover

log = logging.getLogger(__name__)

#: DPO's reward gauges (`method.type: dpo`), by figure, with their help text; labelled by `split`.
REWARD_HELP = {
    "reward_accuracy": "DPO: fraction of pairs whose chosen answer's reward beats the rejected one's, 0 to 1.",
    "reward_margin": "DPO: mean chosen minus rejected reward (beta x log-ratio to the reference, nats).",
    "chosen_reward": "DPO: mean reward of the chosen answers (beta x log-ratio to the reference, nats).",
    "rejected_reward": "DPO: mean reward of the rejected answers (beta x log-ratio to the reference, nats).",
}

LABELS = ("finetunejob", "namespace")
#: Step durations from 10 ms (tiny models) to 10 minutes (huge ones), in seconds.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TrainerMetrics:
    """The trainer's metrics for one job, in their own registry."""

    def __init__(self, job: str, namespace: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"finetunejob": job, "namespace": namespace}

        def gauge(name: str, text: str) -> Any:
            return Gauge(name, text, LABELS, registry=self.registry).labels(**labels)

        self.train_loss = gauge("kubetune_train_loss", "Mean training loss over the last logging window.")
        self.eval_loss = gauge("kubetune_eval_loss", "Validation loss at the latest evaluation.")
        self.best_eval_loss = gauge("kubetune_best_eval_loss", "Lowest validation loss so far.")
        self.learning_rate = gauge("kubetune_learning_rate", "Current learning rate.")
        self.grad_norm = gauge("kubetune_grad_norm", "Global gradient L2 norm at the latest step (before clipping).")
        self.epoch = gauge("kubetune_epoch", "Fractional epochs completed.")
        self.progress = gauge("kubetune_progress_ratio", "Optimizer steps done / planned, 0 to 1.")
        self.remaining = gauge("kubetune_estimated_remaining_seconds", "Estimated time to finish, in seconds.")
        self.evals_without_improvement = gauge(
            "kubetune_evals_without_improvement", "Evaluations since the best one (early stopping)."
        )
        self.checkpoint_seconds = gauge(
            "kubetune_checkpoint_save_duration_seconds", "Wall time of the latest checkpoint save, in seconds."
        )
        self.overfitting = gauge(
            "kubetune_overfitting_suspected", "1 while eval loss rises and train loss falls (OverfittingSuspected)."
        )
        self.underfitting = gauge(
            "kubetune_underfitting_suspected", "1 while both losses stay near their start (UnderfittingSuspected)."
        )
        self.steps = Counter(
            "kubetune_optimizer_steps", "Optimizer steps completed.", LABELS, registry=self.registry
        ).labels(**labels)
        self.tokens = Counter(
            "kubetune_tokens", "Non-padding training tokens processed by the gang.", LABELS, registry=self.registry
        ).labels(**labels)
        self.skipped_steps = Counter(
            "kubetune_skipped_steps",
            "Optimizer steps skipped by the fp16 loss scaler (gradient overflow; the scale is lowered).",
            LABELS,
            registry=self.registry,
        ).labels(**labels)
        self.unauthenticated = Counter(
            "kubetune_unauthenticated_requests",
            "Requests to rank 0's /progress or /result refused: no valid attempt token (KUBETUNE_RANK0_TOKEN).",
            LABELS,
            registry=self.registry,
        ).labels(**labels)
        self.step_seconds = Histogram(
            "kubetune_step_duration_seconds",
            "Wall time of one optimizer step, in seconds.",
            LABELS,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        # GPU-only: defined lazily so that a CPU run does not publish meaningless zeros.
        self._labels = labels
        self._gpu: dict[str, Any] = {}
        self._rewards: dict[str, Any] = {}

    def _gpu_gauge(self, name: str, text: str) -> Any:
        if name not in self._gpu:
            self._gpu[name] = Gauge(name, text, LABELS, registry=self.registry).labels(**self._labels)
        return self._gpu[name]

    def record_rewards(self, split: str, figures: Mapping[str, float | None]) -> None:
        """DPO's reward figures of `split` (`train`: the last step; `validation`: the last evaluation).
        Defined on first use, like the GPU gauges: a supervised run publishes none of them."""
        for name, value in figures.items():
            if value is None:
                continue
            metric = f"kubetune_{name}"
            if metric not in self._rewards:
                help_text = REWARD_HELP[name]
                self._rewards[metric] = Gauge(metric, help_text, (*LABELS, "split"), registry=self.registry)
            self._rewards[metric].labels(**self._labels, split=split).set(value)

    def record_step(
        self, loss: float | None, lr: float, grad_norm: float | None, epoch: float, tokens: int, seconds: float
    ) -> None:
        if loss is not None:
            self.train_loss.set(loss)
        self.learning_rate.set(lr)
        if grad_norm is not None:
            self.grad_norm.set(grad_norm)
        self.epoch.set(epoch)
        self.steps.inc()
        self.tokens.inc(tokens)
        self.step_seconds.observe(seconds)

    def record_skipped_step(self) -> None:
        self.skipped_steps.inc()

    def record_non_finite_loss(self, loss: float) -> None:
        """Set before the run stops with NonFiniteLoss, so that the alert on the gauge sees it."""
        self.train_loss.set(loss)

    def record_progress(self, ratio: float, remaining_seconds: float | None) -> None:
        self.progress.set(ratio)
        if remaining_seconds is not None:
            self.remaining.set(remaining_seconds)

    def record_resume(self, steps: int, tokens: int) -> None:
        """Counters continue from a checkpoint's totals (a restarted pod starts a fresh process)."""
        self.steps.inc(steps)
        self.tokens.inc(tokens)

    def record_eval(self, loss: float | None, best: float | None, evals_without_improvement: int) -> None:
        if loss is not None:
            self.eval_loss.set(loss)
        if best is not None:
            self.best_eval_loss.set(best)
        self.evals_without_improvement.set(evals_without_improvement)

    def record_fit(self, overfitting: bool, underfitting: bool) -> None:
        self.overfitting.set(int(overfitting))
        self.underfitting.set(int(underfitting))

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_seconds.set(seconds)

    def record_gpu_memory_peak(self, value: float) -> None:
        self._gpu_gauge("kubetune_gpu_memory_peak_bytes", "Peak accelerator memory allocated, in bytes.").set(value)

    def record_mfu(self, ratio: float) -> None:
        self._gpu_gauge("kubetune_mfu_ratio", "Model FLOPs utilisation: achieved / peak FLOP/s, 0 to 1.").set(ratio)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood the training log."""


def _json(start_response: Callable[..., Any], body: bytes) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _result(environ: dict[str, Any], start_response: Callable[..., Any], handover: ResultHandover) -> Iterable[bytes]:
    """GET: the whole result once the run has ended (404 before); DELETE: the supervisor has it."""
    method, body = environ.get("REQUEST_METHOD"), handover.body()
    if method == "DELETE" and handover.confirm():
        start_response("204 No Content", [])
        return []
    if method == "GET" and body is not None:
        return _json(start_response, body)
    start_response("404 Not Found", [("Content-Length", "0")])
    return []


@dataclass(frozen=True)
class Guard:
    """Who may use /progress and /result: the holder of the attempt's token (kubetune.api.invocation
    .RANK0_TOKEN_ENV). Without a token (`kubetune run`), anyone who reaches the port, as before."""

    token: str = field(default_factory=lambda: os.environ.get(RANK0_TOKEN_ENV, ""), repr=False)
    refused: Any = None
    """The counter of refused requests (TrainerMetrics.unauthenticated); None: not counted."""

    def allows(self, environ: dict[str, Any]) -> bool:
        if not self.token:
            return True
        given = str(environ.get("HTTP_AUTHORIZATION", ""))
        if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return True
        if self.refused is not None:
            self.refused.inc()
        return False


def _unauthorized(start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("401 Unauthorized", [("Content-Length", "0"), ("WWW-Authenticate", "Bearer")])
    return []


def wsgi_app(
    registry: CollectorRegistry,
    progress_json: Callable[[], bytes],
    handover: ResultHandover | None = None,
    guard: Guard | None = None,
) -> Callable[..., Iterable[bytes]]:
    """`/progress` -> the snapshot JSON; `/result` -> the whole result (kubetune.trainer.handover), both
    for the attempt's token holder only (`guard`); anything else -> prometheus-client's exposition app."""
    metrics_app = make_wsgi_app(registry)
    guard = guard or Guard(token="")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in ("/progress", "/result") and not guard.allows(environ):
            return _unauthorized(start_response)
        if environ.get("PATH_INFO") == "/progress":
            return _json(start_response, progress_json())
        if environ.get("PATH_INFO") == "/result" and handover is not None:
            return _result(environ, start_response, handover)
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    return app


def serve(
    port: int,
    registry: CollectorRegistry,
    progress_json: Callable[[], bytes],
    handover: ResultHandover | None = None,
    guard: Guard | None = None,
) -> Any:
    """Serve metrics and progress on all interfaces at `port` from a daemon thread; the server, or None
    when the port cannot be bound (training goes on: metrics are not worth a failed run)."""
    from prometheus_client.exposition import ThreadingWSGIServer

    try:
        server = make_server(
            "",
            port,
            wsgi_app(registry, progress_json, handover, guard),
            server_class=ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
    except OSError as error:
        log.warning("metrics port %s unavailable (%s); not serving metrics", port, error)
        return None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("serving /metrics and /progress on port %s", port)
    return server


#: Peak dense bf16 FLOP/s of common accelerators, for MFU (device-name substring -> FLOP/s).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(device_name: str) -> float | None:
    return next((flops for key, flops in PEAK_FLOPS.items() if key in device_name), None)
