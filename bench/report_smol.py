"""The SmolLM2-shaped profile's section of docs/benchmarks.md (`python -m bench --profile smol`, issue 17):
the trainer comparison on a real small LLM's shape, its goals said met or missed, and the LM head + loss
alone. Split from bench/report.py, whose helpers and markers it uses."""

from __future__ import annotations

from typing import Any

from bench.report import SMOL_END, SMOL_START, _mib, _ms, _pct, machine_line

#: The SmolLM2-shaped profile's goals (issue 17): tokens/s ratio and the step memory reduction.
SMOL_GOALS = {"tokens_per_second_ratio": 1.15, "memory_reduction": 0.30}


def smol_section(smol: dict[str, Any] | None) -> str:
    """The SmolLM2-135M-shaped comparison (`python -m bench --profile smol`), between its markers."""
    lines = [SMOL_START, "## 1b. A real small LLM's shape: SmolLM2-135M's config (`--profile smol`)", ""]
    if smol is None:
        lines += ["**Pending**: `python -m bench --profile smol` has not been run on this machine yet.", SMOL_END]
        return "\n".join(lines)
    p, m = smol["profile"], smol["machine"]
    size = p["model"]
    lines += [
        f"Measured on {machine_line(m)}, load {m['load_at_start']} at the start and {m['load_at_end']} at the end, "
        f"in {smol['seconds']:.0f} s. Same comparison as above on SmolLM2-135M's config (hidden {size['hidden']}, "
        f"{size['layers']} layers, {size['heads']} heads of which {size['kv_heads']} key/value, MLP "
        f"{size['intermediate']}, tied {size['vocab']}-token vocabulary; {smol.get('parameters') or '?'} "
        f"parameters), random weights, {p['precision']}, {p['processes']} processes, ZeRO-{p['zero_stage']}, "
        f"{p['seq_length']} tokens, micro-batch {p['micro_batch']}, accumulation {p['accumulation']}, uniform data; "
        f"{p['steps']} steps per run, the first {p['warmup_steps']} left out; {p['repetitions']} repetitions, "
        "medians. Memory, from the resident set of the rank processes inside the measured steps, read from /proc "
        "4 times a second (the kernel's peak since the last read, VmHWM, reset at each read, so no short peak is "
        "missed): *peak RSS* is the largest, on the CPU the whole process (model, gradients, optimizer state, "
        "activations and logits); *step rise* is the largest less the smallest resident set, what a training "
        "step holds on top of what lasts between steps (activations, logits, loss buffers: blocks that size are "
        "mmap'ed and handed back when freed). The goal's \"peak memory of a training step\" is read as the step "
        "rise; the LM head + loss table below isolates the part the chunked loss changes.",
        "",
        "| dataset | kubetune tokens/s | transformers tokens/s | ratio (goal >= 1.15) | kubetune peak RSS | "
        "transformers peak RSS | kubetune step rise | transformers step rise | step memory reduction (goal >= 30 %) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    goals: list[str] = []
    for dataset, row in smol["trainer"]["summary"].items():
        k, t = row["kubetune"], row["transformers"]
        reduction = None
        if k.get("step_rise_bytes") and t.get("step_rise_bytes"):
            reduction = 1 - k["step_rise_bytes"] / t["step_rise_bytes"]
        lines.append(
            f"| {dataset} | {k['tokens_per_second']:.0f} | {t['tokens_per_second']:.0f} | "
            f"**{row['tokens_per_second_ratio']:.2f}x** | {_mib(k.get('peak_rss_bytes'))} | "
            f"{_mib(t.get('peak_rss_bytes'))} | {_mib(k.get('step_rise_bytes'))} | {_mib(t.get('step_rise_bytes'))} | "
            f"{'-' if reduction is None else _pct(reduction)} |"
        )
        goals.append(f"{dataset}: {_smol_goals(row['tokens_per_second_ratio'], reduction)}")
    lines += ["", *(f"Goals, {line}" for line in goals)]
    spreads = []
    for side in ("kubetune", "transformers"):
        rates = [r["tokens_per_second"] for r in smol["trainer"]["runs"] if r["side"] == side]
        spreads.append(max(rates) / min(rates) if rates and min(rates) > 0 else 1.0)
    if max(spreads) > 1.2:
        lines += [
            "",
            f"**Spread**: runs of the same trainer differ by up to {max(spreads):.1f}x in tokens/s (the machine's "
            "load changed during the benchmark): with so few long steps the ratio above is not a reliable verdict "
            "either way; the per-step times below and the LM head + loss table are the steadier figures.",
        ]
    lines += [
        "",
        "| trainer | rep | tokens/s | step | peak RSS | step rise | whole run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in smol["trainer"]["runs"]:
        lines.append(
            f"| {r['side']} | {r['repetition']} | {r['tokens_per_second']:.0f} | {_ms(r['step_seconds'])} | "
            f"{_mib(r.get('peak_rss_bytes'))} | {_mib(r.get('step_rise_bytes'))} | {r['process_seconds']:.0f} s |"
        )
    if "loss_head" in smol:
        lines += ["", *_loss_head_lines(smol["loss_head"])]
    return "\n".join([*lines, SMOL_END])


def _smol_goals(ratio: float, reduction: float | None) -> str:
    """The smol profile's goals (SMOL_GOALS), each said met or missed."""
    speed_goal, memory_goal = SMOL_GOALS["tokens_per_second_ratio"], SMOL_GOALS["memory_reduction"]
    speed = f"tokens/s ratio {ratio:.2f}x (goal >= {speed_goal:.2f}x: {'met' if ratio >= speed_goal else 'missed'})"
    if reduction is None:
        return f"{speed}; step memory not measured."
    met = "met" if reduction >= memory_goal else "missed"
    return f"{speed}; step memory reduction {_pct(reduction)} (goal >= {_pct(memory_goal)}: {met})."


def _loss_head_lines(head: dict[str, Any]) -> list[str]:
    """The LM head + loss alone (`bench.loss_head`): plain vs chunked, time and the peak memory added."""
    plain, chunked = head["plain"], head["chunked"]
    lines = [
        f"**The LM head and the loss alone** (`python -m bench.loss_head`, {machine_line(head['machine'])}, load "
        f"{head['machine']['load_at_start']}): forward and backward of a {head['hidden']} -> {head['vocab']} head "
        f"and the summed cross-entropy over {head['tokens']} tokens (one micro-batch of this profile), fp32, one "
        f"thread, each variant in a fresh process; time is the median of {head['repetitions']}, memory the peak "
        "resident set the call adds (VmHWM reset through /proc/self/clear_refs).",
        "",
        "| loss | time | peak memory added |",
        "|---|---|---|",
        f"| plain (all logits, as transformers) | {_ms(plain['seconds'])} | {_mib(plain['peak_added_bytes'])} |",
        f"| chunked (`kubetune.trainer.chunked_loss`) | {_ms(chunked['seconds'])} | "
        f"{_mib(chunked['peak_added_bytes'])} |",
    ]
    if plain["peak_added_bytes"] and chunked["peak_added_bytes"]:
        lines += [
            "",
            f"Chunked vs plain: **{plain['seconds'] / chunked['seconds']:.2f}x** the speed, "
            f"**{_pct(1 - chunked['peak_added_bytes'] / plain['peak_added_bytes'])}** less peak memory.",
        ]
    return lines
