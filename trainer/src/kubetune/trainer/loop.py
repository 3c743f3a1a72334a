"""The training loop: optimizer steps, logging, evaluation, early stopping, checkpoints and the end.

Every rank runs the same sequence of steps. A step starts by all-reducing its count of trained tokens
(every trained token of the step weighs the same: `loss.py`) and ends by all-reducing one small vector
(summed token loss, tokens, stop requests), so the ranks agree on the loss, on a non-finite loss and on
SIGTERM at the same step boundary. A step DeepSpeed's fp16 loss scaler skipped (gradient overflow) is
counted, not fatal; any other non-finite loss sets the loss gauge, then stops the run. Evaluations are collective too, and the early-stopping policy
sees identical numbers on every rank, so all ranks stop together.

Set KUBETUNE_TRACE_DATA=<path prefix> to have each rank append the example indexes of every step to
`<prefix>.rank<R>.jsonl` (a debugging aid; the resume tests use it to prove no example is seen twice).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import replace
from typing import Any, cast

from kubetune.api.job import FineTuneJob
from kubetune.api.operations import EarlyStoppingSpec
from kubetune.api.outcome import TrainerResult
from kubetune.api.status import EvaluationResult, PreferenceFigures, Progress
from kubetune.policies.early_stopping import observe
from kubetune.trainer import baselines, distributed
from kubetune.trainer.checkpoint import Checkpointer, step_name
from kubetune.trainer.config import RunPaths
from kubetune.trainer.data import Example
from kubetune.trainer.dataset import PreparedData
from kubetune.trainer.diagnostics import suspected
from kubetune.trainer.ending import finished_result
from kubetune.trainer.errors import Interrupted, NonFiniteLossError
from kubetune.trainer.evaluation import METRIC_FIELDS, EvaluationSettings, evaluate, settings_of
from kubetune.trainer.fencing import Fence
from kubetune.trainer.hang_watch import Motion
from kubetune.trainer.loss import backward_scale, chunked_head, token_loss_sum, trained_tokens
from kubetune.trainer.metrics import TrainerMetrics, peak_flops
from kubetune.trainer.model import export
from kubetune.trainer.outputs import Recorder
from kubetune.trainer.packing import BatchPlan, Sequence, collate, token_count
from kubetune.trainer.preference_training import PreferenceTraining, figures_of, result_figures
from kubetune.trainer.state import RunState, StopRequest

log = logging.getLogger(__name__)
TRACE_ENV = "KUBETUNE_TRACE_DATA"


class Trainer:
    """One rank's run of a FineTuneJob, from the first step to the export."""

    def __init__(
        self,
        job: FineTuneJob,
        paths: RunPaths,
        rank: distributed.Rank,
        engine: Any,
        tokenizer: Any,
        data: PreparedData,
        plan: BatchPlan,
        stop: StopRequest,
        metrics: TrainerMetrics,
        recorder: Recorder,
        fence: Fence | None = None,
        motion: Motion | None = None,
    ) -> None:
        self.spec = job.spec
        self.paths, self.rank, self.engine, self.tokenizer = paths, rank, engine, tokenizer
        self.data, self.plan, self.stop = data, plan, stop
        self.metrics, self.recorder = metrics, recorder
        self.total_steps = plan.total_steps(self.spec.hyperparameters.epochs, self.spec.hyperparameters.max_steps)
        self.motion = motion or Motion()
        """What the hang watch sees of this rank's training (kubetune.trainer.hang_watch)."""
        self.fence = fence or Fence(paths.checkpoints, None, rank)
        """The attempt's hold on the checkpoint folder: checked at each checkpoint and around the export."""
        self.checkpointer = Checkpointer(paths.checkpoints, self.spec.checkpointing.keep, rank, fence=self.fence)
        self.state = RunState()
        self.started = time.time()
        self.start_step = 0
        self.resume_note: str | None = None
        """What resuming skipped (damaged checkpoints, named), for the result's message."""
        self.stopping = False
        """Some rank was asked to stop (agreed at the last step boundary)."""
        self.evaluation = settings_of(self.spec)
        # Periodic evaluations score loss and token accuracy only: generating every answer at every
        # evaluation would cost more than training on a CPU. Exact match is scored on the base model,
        # the baselines and the final (or best) model.
        self.periodic = replace(self.evaluation, exact_match=False)
        trace = os.environ.get(TRACE_ENV)
        self.trace = f"{trace}.rank{rank.rank}.jsonl" if trace else None
        self.parameters = sum(distributed.numel(p) for p in engine.module.parameters())
        self.head = chunked_head(engine.module, self.spec.distributed.zero_stage)
        """The LM head when the loss is computed chunk by chunk with it (kubetune.trainer.loss)."""
        dpo = self.spec.method.preference
        self.preference = PreferenceTraining(dpo, engine, tokenizer, data, rank) if dpo else None
        """DPO's loss and scoring (kubetune.trainer.preference_training); None for supervised fine-tuning."""

    # ----- start -----------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the newest usable checkpoint, if any."""
        self.checkpointer.clean_partials()
        resumed = self.checkpointer.resume(self.engine)
        if resumed is not None:
            self.resume_note = resumed.note
            self.state = RunState.from_sidecar(resumed.state, self.plan)
            log.info(
                "resumed from checkpoint %s (step %d of %d)",
                step_name(self.state.step),
                self.state.step,
                self.total_steps,
            )
            self.metrics.record_resume(self.state.step, self.state.tokens)
        self.start_step = self.motion.step = self.state.step
        if self.preference is not None:  # before the first step the weights are the reference
            batch = self.spec.hyperparameters.micro_batch_size
            saved = self.state.reference_log_probs
            self.state.reference_log_probs = self.preference.prepare_reference(saved, batch, self.state.step)

    def evaluate_base_model(self) -> None:
        """compareBaseModel: score the untouched model once, before the first step."""
        asked = self.spec.evaluation and self.spec.evaluation.compare_base_model
        if not (asked or self.preference) or self.state.step > 0:  # DPO's verdict always has its reference
            return
        self.recorder.publish(phase="Evaluating")
        result = self._score(self.evaluation, self.data.verdict_set_name)  # compared with the fine-tuned one
        self.state.base_evaluation = result.model_dump()
        log.info("base model: %s", result.model_dump_json(exclude_none=True))
        record = {"kind": "eval", "model": "base", "step": 0, "set": self.data.verdict_set_name}
        self.recorder.log_metrics(record | result.model_dump(exclude_none=True))

    def evaluate_baselines(self) -> None:
        """evaluation.baselines: the base (and reference) model prompted zero- and few-shot, before step 1."""
        spec = self.spec.evaluation
        if not (spec and spec.baselines) or self.state.step > 0:
            return
        self.recorder.publish(phase="Evaluating")
        base = EvaluationResult(**self.state.base_evaluation) if self.state.base_evaluation else None
        module, manifest_dir = self.engine.module, self.paths.manifest.parent
        rows = baselines.prompting_baselines(
            self.spec, self.data, module, self.tokenizer, self.evaluation, self.rank, manifest_dir, base
        )
        self.state.baseline_rows = [row.model_dump() for row in rows]
        self.engine.train()

    # ----- the loop --------------------------------------------------------------------------------

    def train(self) -> TrainerResult:
        self.engine.train()
        self.started = time.time()
        self.recorder.publish(progress=self._progress(), phase="Training")
        early_stop_message = None
        while self.state.step < self.total_steps:
            self._step()
            step = self.state.step
            improved = False
            if self._evaluation_due(step):
                improved, early_stop_message = self._evaluate(step)
            if self.stopping or improved or step % self.spec.checkpointing.every_steps == 0:
                self._checkpoint(step)
            if self.stopping:
                raise Interrupted(f"stopped by {self.stop.signal_name or 'a signal'} at step {step}; checkpoint saved")
            if early_stop_message:
                return self._finish("EarlyStopped", early_stop_message)
        if self.state.last_evaluated_step != self.state.step:
            self._evaluate(self.state.step)
        return self._finish("Succeeded", f"trained {self.state.step} steps")

    def _step(self) -> None:
        began = time.perf_counter()
        lr = float(self.engine.get_lr()[0])
        batches = self.plan.micro_batches(self.state.step, self.rank.rank)
        micro_sequences = [[self.data.sequences[i] for i in indexes] for indexes in batches]
        # Every trained token (DPO: pair) of the step weighs the same (kubetune.trainer.loss): count them first.
        counts = [len(s) if self.preference else trained_tokens(cast(list[Sequence], s)) for s in micro_sequences]
        (step_tokens,) = distributed.all_reduce_sum([float(sum(counts))], self.rank.device)
        scale = backward_scale(self.rank.world, int(step_tokens))
        skipped_before = getattr(self.engine, "skipped_steps", 0)
        loss_sum = tokens = 0.0
        for indexes, sequences in zip(batches, micro_sequences, strict=True):
            summed = self._micro_batch_loss(indexes, sequences)
            self.engine.backward(summed * scale, scale_wrt_gas=False)
            self.engine.step()
            loss_sum += float(summed.detach())
            tokens += token_count(cast(list[Sequence], sequences))  # a Pair counts both answers' tokens
        self._trace(batches)
        rewards = self.preference.take_step_totals() if self.preference else []
        total_loss, total_tokens, stops, *rewards = distributed.all_reduce_sum(
            [loss_sum, tokens, 1.0 if self.stop.requested else 0.0, *rewards], self.rank.device
        )
        self.state.step += 1
        loss = total_loss / step_tokens if step_tokens else 0.0
        # An fp16 overflow is the loss scaler's business: DeepSpeed skipped the update and lowered the scale.
        skipped = getattr(self.engine, "skipped_steps", 0) > skipped_before
        if skipped:
            self.metrics.record_skipped_step()
            log.warning("step %d skipped: fp16 overflow (the loss scaler lowers its scale)", self.state.step)
        elif not math.isfinite(loss):
            self.metrics.record_non_finite_loss(loss)  # the alert sees it before the run stops
            raise NonFiniteLossError(
                f"training loss became {loss} at step {self.state.step}",
                retryable=self.spec.retry_policy.restart_on_non_finite_loss,
            )
        # Decide on the agreed value only; the local request is never cleared (a signal may arrive while
        # this rank waits in the all-reduce above, and must count at the next boundary).
        self.stopping = stops > 0
        seconds = time.perf_counter() - began
        self.motion.stepped(self.state.step, seconds)
        self.state.tokens += int(total_tokens)
        self._log_step(loss, lr, int(total_tokens), seconds, skipped, figures_of(rewards) if rewards else None)

    def _micro_batch_loss(self, indexes: list[int], sequences: list[Any]) -> Any:
        """The summed loss of one micro-batch: token losses, or DPO's pair losses."""
        if self.preference is not None:
            return self.preference.micro_batch_loss(indexes)
        batch = collate(sequences, self.tokenizer.pad_token_id, self.spec.dataset.packing)
        return token_loss_sum(self.engine, {k: v.to(self.rank.device) for k, v in batch.items()}, self.head)

    def _trace(self, batches: list[list[int]]) -> None:
        if self.trace:
            sequences = self.data.sequences
            examples = [e for indexes in batches for i in indexes for e in getattr(sequences[i], "example_ids", (i,))]
            with open(self.trace, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": self.state.step + 1, "examples": examples}) + "\n")

    def _log_step(
        self,
        loss: float,
        lr: float,
        tokens: int,
        seconds: float,
        skipped: bool = False,
        rewards: PreferenceFigures | None = None,
    ) -> None:
        """Record a finished step; a step the fp16 loss scaler skipped has no gradient norm, and its loss
        is left out of the gauges when it is not finite (that is what the scaler handles)."""
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None and not skipped else None
        shown = loss if math.isfinite(loss) else None
        epoch = self.plan.epoch_at(self.state.step)
        self.metrics.record_step(shown, lr, grad_norm, epoch, tokens, seconds)
        if shown is not None:
            self.state.fit.record_train_loss(shown)
        progress = self._progress()
        self.metrics.record_progress(self.state.step / self.total_steps, progress.eta_seconds)
        tokens_per_second = tokens / seconds if seconds > 0 else 0.0
        self._record_gpu(tokens_per_second)
        record = {"kind": "train", "step": self.state.step, "epoch": round(epoch, 4), "train_loss": shown, "lr": lr}
        record |= {
            "grad_norm": grad_norm,
            "tokens": tokens,
            "step_seconds": seconds,
            "tokens_per_second": tokens_per_second,
        }
        if skipped:
            record["skipped"] = True
        if rewards is not None:
            record |= rewards.model_dump(exclude_none=True)
        self.recorder.log_metrics(record)
        update: dict[str, Any] = {"learning_rate": lr, "tokens_per_second": tokens_per_second}
        if rewards is not None:
            update["train_rewards"] = rewards
            self.metrics.record_rewards("train", rewards.model_dump())
        if shown is not None:
            update["train_loss"] = shown
        metrics = self.recorder.snapshot.metrics.model_copy(update=update)
        self.recorder.publish(progress=progress, metrics=metrics)

    def _record_gpu(self, tokens_per_second: float) -> None:
        import torch

        if self.rank.device.type != "cuda":
            return
        self.metrics.record_gpu_memory_peak(torch.cuda.max_memory_allocated(self.rank.device))
        peak = peak_flops(torch.cuda.get_device_name(self.rank.device))
        if peak:
            # 6 FLOPs per parameter per token (forward + backward), the usual estimate; per GPU.
            self.metrics.record_mfu(6 * self.parameters * tokens_per_second / self.rank.world / peak)

    def _progress(self) -> Progress:
        done = self.state.step - self.start_step
        eta = None
        if done > 0:
            per_step = (time.time() - self.started) / done
            eta = int(per_step * (self.total_steps - self.state.step))
        return Progress(
            step=self.state.step,
            total_steps=self.total_steps,
            epoch=self.plan.epoch_at(self.state.step),
            percent=int(100 * self.state.step / self.total_steps) if self.total_steps else 0,
            eta_seconds=eta,
        )

    # ----- evaluation and early stopping -------------------------------------------------------------

    def _evaluation_due(self, step: int) -> bool:
        every = self.spec.evaluation.every_steps if self.spec.evaluation else None
        return step == self.total_steps or (every is not None and step % every == 0)

    def _evaluate(self, step: int) -> tuple[bool, str | None]:
        """Evaluate at `step`; (improved, early-stop message or None)."""
        self.recorder.publish(phase="Evaluating")
        # The final evaluation also scores answers, unless a test set scores them for the verdict instead.
        final = step == self.total_steps and self.data.test is None
        result = self._score(self.evaluation if final else self.periodic)
        self._diagnose(step, result.eval_loss)
        policy = self.spec.early_stopping or EarlyStoppingSpec()
        value = getattr(result, METRIC_FIELDS[policy.metric])
        decision = observe(policy, self.state.early_stopping, math.nan if value is None else value, step)
        self.state.early_stopping = decision.state
        self.state.last_evaluation, self.state.last_evaluated_step = result.model_dump(), step
        if decision.improved:
            self.state.best_evaluation = result.model_dump()
        best_loss = (self.state.best_evaluation or {}).get("eval_loss")
        self.metrics.record_eval(result.eval_loss, best_loss, decision.state.evals_without_improvement)
        record = {"kind": "eval", "model": "fine-tuned", "step": step, "epoch": round(self.plan.epoch_at(step), 4)}
        self.recorder.log_metrics(record | result.model_dump(exclude_none=True) | {"best_eval_loss": best_loss})
        log.info("step %d evaluation: %s; %s", step, result.model_dump_json(exclude_none=True), decision.message)
        update = {"eval_loss": result.eval_loss, "best_eval_loss": best_loss, "best_step": decision.state.best_step}
        if self.preference is not None:
            rewards = result_figures(result)
            update["eval_rewards"] = rewards
            self.metrics.record_rewards("validation", rewards.model_dump())
        metrics = self.recorder.snapshot.metrics.model_copy(update=update)
        self.recorder.publish(metrics=metrics, phase="Training")
        if self.spec.early_stopping is None:
            return False, None
        return decision.improved, decision.message if decision.stop else None

    def _diagnose(self, step: int, eval_loss: float | None) -> None:
        """Fit diagnostics after an evaluation: gauges and the progress snapshot."""
        self.state.fit.record_evaluation(step, eval_loss, self.recorder.snapshot.metrics.train_loss)
        rising = self.spec.evaluation.overfitting_evaluations if self.spec.evaluation else 3
        progress = step / self.total_steps if self.total_steps else 1.0
        reports = self.state.fit.reports(rising, progress, self.spec.hyperparameters.learning_rate)
        self.metrics.record_fit(suspected(reports, "OverfittingSuspected"), suspected(reports, "UnderfittingSuspected"))
        self.recorder.publish(fit=reports)
        for report in reports:
            if report.status == "True":
                log.warning("%s: %s", report.type, report.message)

    def _checkpoint(self, step: int) -> None:
        self.recorder.publish(phase="Checkpointing")
        began = time.perf_counter()
        best = self.state.early_stopping.best_step if self.spec.early_stopping else None
        with self.motion.unwatched("checkpointing"):
            folder = self.checkpointer.save(self.engine, step, self.state.to_sidecar(self.plan), best)
        self.metrics.record_checkpoint(time.perf_counter() - began)
        log.info("checkpoint %s saved in %.2f s", folder, time.perf_counter() - began)
        self.recorder.publish(phase="Training")

    # ----- the end ---------------------------------------------------------------------------------

    def _finish(self, outcome: str, message: str) -> TrainerResult:
        fine_tuned = self.state.last_evaluation
        if outcome == "EarlyStopped":
            best = self.state.early_stopping.best_step
            folder = self.paths.checkpoints / step_name(best or 0)
            with self.motion.unwatched("restoring the best checkpoint"):  # one long read, as a write is
                self.checkpointer.load_weights(self.engine, folder, self.spec.distributed.zero_stage)
            fine_tuned = self.state.best_evaluation
            message = f"early stopped at step {self.state.step}: {message}; exported step {best}"
            if self.evaluation.exact_match and self.data.test is None:  # periodic evaluations did not generate
                fine_tuned = self._score(self.evaluation).model_dump()  # score the exported weights
        if self.data.test is not None:  # the verdict's figures: the exported weights on the test set
            fine_tuned = self._score(self.evaluation, "test").model_dump()
        if self.resume_note:
            message = f"{message}; {self.resume_note}"
        self.recorder.publish(phase="Exporting")
        lora = self.spec.method.lora
        merge = lora.merge if lora else True
        self.fence.agree("exporting the model")
        with self.motion.unwatched("exporting"):
            export(
                self.engine.module,
                self.tokenizer,
                self.paths.output,
                merge,
                self.spec.distributed.zero_stage,
                self.rank.is_main,
                may_replace=lambda: self.fence.allows(f"replacing {self.paths.output}"),
            )
        self.fence.agree("finishing the export")  # after: rank 0 left the output alone if its check failed
        self.recorder.publish(phase="Finished")
        return finished_result(self, outcome, message, EvaluationResult(**fine_tuned) if fine_tuned else None)

    def _score(self, settings: EvaluationSettings, set_name: str = "validation") -> EvaluationResult:
        """The model as it is now on the held-out set `set_name`, on all ranks; training mode is restored."""
        held = self.data.held(set_name)
        if self.preference is not None:
            result = self.preference.score(held, set_name, settings)
            self.engine.train()
            return result
        examples = cast(list[Example], held.examples)
        result = evaluate(self.engine.module, self.tokenizer, examples, held.cases, settings, self.rank)
        self.engine.train()
        return result
