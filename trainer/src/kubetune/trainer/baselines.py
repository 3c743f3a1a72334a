"""Was fine-tuning worth it? Prompting baselines beside the fine-tuned model, and the verdict.

Before training, the untouched base model (and an optional stronger reference model) answers the
test prompts (the validation prompts when the job has no test set) zero-shot and few-shot — with the k training examples most similar to each prompt
placed before it (see `retrieval`). After training the fine-tuned model answers the same prompts. Every
row carries the task metric (exact match), eval loss, mean latency per answer, generated tokens/s and
the parameter count, and one sentence says which approach won on quality and at what latency and size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubetune.api.job import FineTuneJobSpec
from kubetune.api.operations import BaselinesSpec
from kubetune.api.status import ApproachResult, EvaluationResult, EvaluationSummary
from kubetune.api.training import MethodSpec
from kubetune.trainer import distributed, retrieval
from kubetune.trainer.data import Example, GenerationCase, Record, as_supervised, generation_case, tokenize_record
from kubetune.trainer.dataset import PreparedData
from kubetune.trainer.evaluation import EvaluationSettings, evaluate

log = logging.getLogger(__name__)


def few_shot_record(record: Record, shots: Sequence[Record], fmt: str) -> Record:
    """`record` with `shots` put before it as solved examples, in the record's own format.

    chat: the shots' user/assistant turns precede the record's turns (after its system message, if any);
    prompt-completion: each shot's prompt and completion, separated by blank lines, precede the prompt.
    """
    fields = dict(record.fields)
    if fmt == "chat":
        messages = list(fields["messages"])
        system = [m for m in messages[:1] if m["role"] == "system"]
        examples = [m for shot in shots for m in shot.fields["messages"] if m["role"] in ("user", "assistant")]
        fields["messages"] = system + examples + messages[len(system) :]
    elif fmt == "prompt-completion":
        solved = "".join(f"{s.fields['prompt']}{s.fields['completion']}\n\n" for s in shots)
        fields["prompt"] = solved + str(fields["prompt"])
    else:
        raise ValueError(f"few-shot prompting needs answers to show: format {fmt!r} has none")
    return replace(record, fields=fields)


def _size(parameters: int | None) -> str:
    if parameters is None:
        return "?"
    if parameters >= 1e9:
        return f"{parameters / 1e9:.1f} B"
    if parameters >= 1e6:
        return f"{parameters / 1e6:.0f} M"
    return f"{parameters / 1e3:.0f} k"


def _compared_on(rows: Sequence[ApproachResult]) -> str:
    """The metric every row has: preference accuracy (DPO), exact match where answers were scored, else
    eval loss."""
    if all(row.preference_accuracy is not None for row in rows):
        return "preference accuracy"
    return "exact match" if all(row.exact_match is not None for row in rows) else "eval loss"


def _quality(row: ApproachResult, metric: str) -> float:
    """Higher is better: preference accuracy, exact match, or the negative eval loss (-inf when missing or
    not finite)."""
    if metric == "preference accuracy" and row.preference_accuracy is not None:
        return row.preference_accuracy
    if metric == "exact match" and row.exact_match is not None:
        return row.exact_match
    return -row.eval_loss if row.eval_loss is not None and math.isfinite(row.eval_loss) else -math.inf


def _score(row: ApproachResult, metric: str) -> str:
    if metric == "preference accuracy" and row.preference_accuracy is not None:
        return f"{row.preference_accuracy:.2f}"
    if metric == "exact match" and row.exact_match is not None:
        return f"{row.exact_match:.2f}"
    return f"{row.eval_loss:.3g}" if row.eval_loss is not None else "?"


def reference_row(reference: EvaluationResult, parameters: int) -> ApproachResult:
    """DPO's reference (the starting weights, scored before the first step) as a row of the verdict."""
    fields = reference.model_dump() | {"parameters": parameters}
    return ApproachResult(name="reference (starting model)", approach="zero-shot", model="base", **fields)


def _latency_against(row: ApproachResult, other: ApproachResult) -> str | None:
    """`row`'s answer latency relative to `other`'s ("at 1/2.2 of its latency")."""
    if not row.latency_seconds or not other.latency_seconds:
        return None
    ratio = row.latency_seconds / other.latency_seconds
    return f"at 1/{1 / ratio:.1f} of its latency" if ratio < 1 else f"at {ratio:.1f}x its latency"


def verdict(rows: Sequence[ApproachResult]) -> str:
    """One sentence: did fine-tuning pay off? The fine-tuned model against the best prompting approach,
    whichever won, with the size and latency that come with each.

    The user fine-tunes to beat prompting, so that is always the comparison: "fine-tuning did not pay
    off: 0.00 vs 0.75 exact match for base 4-shot" says both what happened to the fine-tuned model and
    what to use instead."""
    fine_tuned = next((row for row in rows if row.approach == "fine-tuned"), None)
    prompting = [row for row in rows if row.approach != "fine-tuned"]
    if fine_tuned is None or not prompting:
        only = fine_tuned or (max(prompting, key=lambda r: _quality(r, _compared_on(prompting))) if prompting else None)
        if only is None:
            return "no approach was evaluated"
        metric = _compared_on(prompting or [only])
        missing = "" if fine_tuned else " (the fine-tuned model was not evaluated)"
        return f"{only.name} ({_size(only.parameters)}) reaches {_score(only, metric)} {metric}{missing}"
    metric = _compared_on([fine_tuned, *prompting])
    best = max(prompting, key=lambda row: _quality(row, metric))
    ours, theirs = _quality(fine_tuned, metric), _quality(best, metric)
    outcome = "paid off" if ours > theirs else "did not pay off" if ours < theirs else "only matched prompting"
    sentence = f"fine-tuning {outcome}: {_score(fine_tuned, metric)} vs {_score(best, metric)} {metric} for {best.name}"
    if fine_tuned.parameters != best.parameters:
        sentence += f" ({_size(best.parameters)} parameters; fine-tuned {_size(fine_tuned.parameters)})"
    latency = _latency_against(fine_tuned, best)
    sentence = f"{sentence}, {latency}" if latency else sentence
    return sentence + _answers_regressed(fine_tuned, prompting, metric)


def _answers_regressed(fine_tuned: ApproachResult, prompting: Sequence[ApproachResult], metric: str) -> str:
    """When the verdict compares something else (DPO: preference accuracy) while answers were scored too:
    the warning that the fine-tuned model now answers worse, and, with a falling chosen reward, why."""
    answered = [row for row in prompting if row.exact_match is not None]
    if metric == "exact match" or fine_tuned.exact_match is None or not answered:
        return ""
    best = max(answered, key=lambda row: row.exact_match or 0.0)
    if fine_tuned.exact_match >= (best.exact_match or 0.0):
        return ""
    warning = f"; but its exact match fell to {fine_tuned.exact_match:.2f} from {best.exact_match:.2f} for {best.name}"
    if fine_tuned.chosen_reward is not None and fine_tuned.chosen_reward < 0:
        warning += (
            " (the chosen answers lost likelihood too: a higher method.dpo.beta, a lower learning rate or fewer "
            "steps keep the policy closer to its reference)"
        )
    return warning


@dataclass(frozen=True)
class Split:
    """The raw records baselines are built from, and the format they are in."""

    train: list[Record]
    validation: list[Record]
    format: str


def similar_train_examples(split: Split, spec: BaselinesSpec, base_model: Any, tokenizer: Any) -> list[list[int]]:
    """For each validation record, the indexes of the k most similar training records."""
    if spec.few_shot_examples == 0 or split.format == "text":
        return [[] for _ in split.validation]
    queries = [retrieval.query_text(r, split.format) for r in split.validation]
    keys = [retrieval.query_text(r, split.format) for r in split.train]

    # One call for both sides: the embedding model is loaded once.
    if spec.embeddings == "base-model":
        vectors = retrieval.model_embeddings(base_model, tokenizer, queries + keys)
    else:
        vectors = retrieval.sentence_embeddings(queries + keys)
    return retrieval.nearest(vectors[: len(queries)], vectors[len(queries) :], spec.few_shot_examples)


def _cases(
    records: list[Record], fmt: str, tokenizer: Any, max_length: int
) -> tuple[list[Example], list[GenerationCase]]:
    examples, cases = [], []
    for record in records:
        example = tokenize_record(record, fmt, tokenizer, max_length, train_on_inputs=False)
        case = generation_case(record, fmt, tokenizer)
        if example is not None:
            examples.append(example)
            if case is not None:
                cases.append(case)
    return examples, cases


def approach_rows(
    model: Any,
    tokenizer: Any,
    label: str,
    split: Split,
    spec: BaselinesSpec,
    neighbours: list[list[int]],
    settings: EvaluationSettings,
    rank: distributed.Rank,
    max_seq_length: int,
    zero_shot: EvaluationResult | None = None,
) -> list[ApproachResult]:
    """Zero-shot and few-shot rows of one model (call on every rank: evaluation is collective).

    `zero_shot`: the model's zero-shot result when it was already scored the same way (compareBaseModel
    with answers scored), so that it is not computed twice."""
    validation = split.validation[: settings.max_examples]
    parameters = parameter_count(model)
    answers = split.format != "text"
    runs: list[tuple[str, str, list[Record], int]] = []
    if spec.zero_shot:
        runs.append((f"{label} zero-shot", "zero-shot", validation, max_seq_length))
    if spec.few_shot_examples and answers:
        shots = [
            few_shot_record(r, [split.train[i] for i in near], split.format)
            for r, near in zip(validation, neighbours, strict=False)
        ]
        runs.append(
            (f"{label} {spec.few_shot_examples}-shot", "few-shot", shots, max_seq_length * (spec.few_shot_examples + 1))
        )
    rows = []
    for name, approach, records, length in runs:
        examples, cases = _cases(records, split.format, tokenizer, length)
        reusable = (
            zero_shot is not None and approach == "zero-shot" and (zero_shot.exact_match is not None or not answers)
        )
        if reusable and zero_shot is not None:
            result = zero_shot
        else:
            result = evaluate(model, tokenizer, examples, cases, replace(settings, exact_match=answers), rank)
        log.info("baseline %s: %s", name, result.model_dump_json(exclude_none=True))
        rows.append(
            ApproachResult(
                name=name, approach=approach, model=label, **(result.model_dump() | {"parameters": parameters})
            )
        )
    return rows


def parameter_count(model: Any) -> int:
    """Parameters of the model as deployed: LoRA adapters excluded (they are merged on export)."""
    return sum(distributed.numel(p) for name, p in model.named_parameters() if "lora_" not in name)


def prompting_baselines(
    spec: FineTuneJobSpec,
    data: PreparedData,
    model: Any,
    tokenizer: Any,
    settings: EvaluationSettings,
    rank: distributed.Rank,
    manifest_dir: Path,
    base_zero_shot: EvaluationResult | None = None,
) -> list[ApproachResult]:
    """The base model's (and the reference model's) prompting baselines, before training."""
    from kubetune.trainer.model import load_model, load_tokenizer

    evaluation = spec.evaluation
    assert evaluation is not None and evaluation.baselines is not None
    plan = evaluation.baselines
    split = Split(data.train_records, data.verdict_set.records, data.format)
    if data.format == "preference":  # prompted to give the chosen answer, as the exact match scores it
        train, verdict_records = ([as_supervised(r)[0] for r in part] for part in (split.train, split.validation))
        split = Split(train, verdict_records, as_supervised(split.train[0])[1])
    neighbours = similar_train_examples(split, plan, model, tokenizer)
    length = spec.dataset.max_seq_length
    rows = approach_rows(model, tokenizer, "base", split, plan, neighbours, settings, rank, length, base_zero_shot)
    if evaluation.reference_model is not None:
        reference_spec = spec.model_copy(update={"model": evaluation.reference_model, "method": MethodSpec()})
        reference_tokenizer = load_tokenizer(evaluation.reference_model, manifest_dir)
        reference = load_model(reference_spec, manifest_dir, next(model.parameters()).dtype).to(rank.device)
        rows += approach_rows(
            reference, reference_tokenizer, "reference", split, plan, neighbours, settings, rank, length
        )
        del reference
    return rows


def scored_on_note(scored_on: str, examples: int) -> str:
    """What the verdict's figures are worth: an unbiased test set, or the validation set that chose the
    checkpoint (the fine-tuned model's figure is then optimistic, and the sentence says so)."""
    if scored_on == "test":
        return f"scored on {examples} test examples that no training decision saw"
    return (
        f"scored on the {examples} validation examples that also chose the checkpoint, so the fine-tuned figure "
        "is optimistic (add dataset.testSplit or dataset.test for an unbiased one)"
    )


def summary(
    base: EvaluationResult | None,
    fine_tuned: EvaluationResult | None,
    baselines: list[ApproachResult],
    parameters: int,
    scored_on: str = "validation",
    examples: int = 0,
) -> EvaluationSummary:
    """Base vs fine-tuned, and — when baselines ran — every approach and the verdict, with the set they
    were scored on."""
    on = "test" if scored_on == "test" else "validation"
    if not baselines:
        return EvaluationSummary(base_model=base, fine_tuned=fine_tuned, scored_on=on)
    rows = list(baselines)
    if fine_tuned is not None:
        fields = fine_tuned.model_dump() | {"parameters": parameters}
        rows.append(ApproachResult(name="fine-tuned", approach="fine-tuned", model="fine-tuned", **fields))
    sentence = f"{verdict(rows)}; {scored_on_note(on, examples)}"
    return EvaluationSummary(base_model=base, fine_tuned=fine_tuned, approaches=rows, verdict=sentence, scored_on=on)
