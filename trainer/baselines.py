"""Was fine-tuning worth it? Prompting baselines beside the fine-tuned model, and the verdict.

Before training, the untouched base model (and an optional stronger reference model) answers the
validation prompts zero-shot and few-shot — with the k training examples most similar to each prompt
placed before it (see `retrieval`). After training the fine-tuned model answers the same prompts. Every
row carries the task metric (exact match), eval loss, mean latency per answer, generated tokens/s and
the parameter count, and one sentence says which approach won on quality and at what latency and size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from kubetune.api.status import ApproachResult
from kubetune.trainer.data import Record


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


def _quality(row: ApproachResult) -> float:
    """Exact match where answers were scored, else negative eval loss (higher is better either way)."""
    if row.exact_match is not None:
        return row.exact_match
    return -row.eval_loss if row.eval_loss is not None and math.isfinite(row.eval_loss) else -math.inf


def _latency_ratio(row: ApproachResult, other: ApproachResult) -> str | None:
    if not row.latency_seconds or not other.latency_seconds:
        return None
    ratio = row.latency_seconds / other.latency_seconds
    if ratio < 1:
        return f"at 1/{1 / ratio:.1f} of {other.name}'s latency"
    return f"at {ratio:.1f}x {other.name}'s latency"


def verdict(rows: Sequence[ApproachResult]) -> str:
    """One sentence: which approach won on quality, against the best other one, at what latency and size."""
    if not rows:
        return "no approach was evaluated"
    ranked = sorted(rows, key=_quality, reverse=True)
    winner = ranked[0]
    metric = "exact match" if winner.exact_match is not None else "eval loss"

    def score(row: ApproachResult) -> str:
        if row.exact_match is not None:
            return f"{row.exact_match:.2f}"
        return f"{row.eval_loss:.3g}" if row.eval_loss is not None else "?"

    if len(ranked) == 1:
        return f"{winner.name} ({_size(winner.parameters)}) reaches {score(winner)} {metric}"
    runner_up = ranked[1]
    sentence = (
        f"{winner.name} ({_size(winner.parameters)}) reaches {score(winner)} {metric} vs {score(runner_up)} "
        f"for {runner_up.name} ({_size(runner_up.parameters)})"
    )
    slowest = max(rows, key=lambda r: r.latency_seconds or 0.0)
    latency = _latency_ratio(winner, slowest) if slowest is not winner else _latency_ratio(winner, runner_up)
    return f"{sentence}, {latency}" if latency else sentence
