"""Writes the quickstart's support-ticket triage data (train.jsonl, validation.jsonl, test.jsonl), and the
same questions as preference pairs (preference-*.jsonl: the answer chosen over a near miss), deterministically.

The task: read a customer's message and answer in one fixed format, `category=<c> order=<digits|none>`,
where the category is one of refund, shipping, account or technical. Its answers are exact, so exact-match
accuracy measures it; a pre-trained instruct model answers in prose and scores near zero until it is
fine-tuned. Each example is a chat (`messages`), rendered with the model's own chat template.

Run `python examples/data/generate.py` to rewrite the files; the seed keeps them identical.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = (
    "Triage this support ticket. Answer only as: category=<refund|shipping|account|technical> order=<number|none>"
)

TEMPLATES = {
    "refund": [
        "I want my money back for {thing}{order_part}. It arrived broken.",
        "Please refund {thing}{order_part}, I returned it last {day}.",
        "Can I get a refund? {thing_cap}{order_part} is not what I ordered.",
        "You charged me twice for {thing}{order_part}. I need the extra payment returned.",
        "I cancelled {thing}{order_part} on {day} but still have not been reimbursed.",
    ],
    "shipping": [
        "Where is my package? {thing_cap}{order_part} was supposed to arrive on {day}.",
        "The tracking for {thing}{order_part} has not moved in a week.",
        "Can you ship {thing}{order_part} to a different address? I moved on {day}.",
        "The courier left {thing}{order_part} at the wrong door.",
        "How long does delivery take for {thing}{order_part}? It still says processing.",
    ],
    "account": [
        "I cannot log in to my account since {day}{order_part}.",
        "Please change the email address on my account{order_part}.",
        "How do I delete my account? I no longer need it{order_part}.",
        "My password reset link never arrives{order_part}.",
        "Someone else is using my account, I saw a login on {day}{order_part}.",
    ],
    "technical": [
        "{thing_cap}{order_part} keeps restarting every few minutes.",
        "The app crashes when I open the settings of {thing}{order_part}.",
        "{thing_cap}{order_part} will not connect to my wifi since {day}.",
        "The screen of {thing}{order_part} flickers after the latest update.",
        "Bluetooth pairing fails with {thing}{order_part}, error code {code}.",
    ],
}
THINGS = [
    "the blue kettle",
    "my headphones",
    "the standing desk",
    "the coffee grinder",
    "my new phone",
    "the winter jacket",
    "the smart watch",
    "the desk lamp",
    "the robot vacuum",
    "the camping tent",
    "the e-reader",
    "my keyboard",
    "the baby monitor",
    "the air fryer",
    "the running shoes",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def example(rng: random.Random, category: str) -> dict[str, object]:
    order = str(rng.randint(10000, 99999)) if rng.random() < 0.75 else None
    order_part = rng.choice([f" (order {order})", f", order #{order}", f" from order {order}"]) if order else ""
    thing = rng.choice(THINGS)
    text = rng.choice(TEMPLATES[category]).format(
        thing=thing,
        thing_cap=thing[0].upper() + thing[1:],
        order_part=order_part,
        day=rng.choice(DAYS),
        code=rng.randint(100, 999),
    )
    answer = f"category={category} order={order or 'none'}"
    return {
        "messages": [{"role": "user", "content": f"{INSTRUCTION}\n\n{text}"}, {"role": "assistant", "content": answer}]
    }


def rejected_answer(rng: random.Random, answer: str) -> str:
    """A near miss of `answer`: another category (two pairs in three) or the wrong order number."""
    category, order = (part.split("=", 1)[1] for part in answer.split())
    if rng.random() < 2 / 3:
        category = rng.choice([c for c in sorted(TEMPLATES) if c != category])
    elif order == "none":
        order = str(rng.randint(10000, 99999))
    else:
        order = "none" if rng.random() < 0.5 else order[::-1]
    return f"category={category} order={order}"


def preference_pair(rng: random.Random, row: dict[str, object]) -> dict[str, object]:
    """The chat `row` as a preference pair: its question, its answer (chosen) and a near miss (rejected)."""
    messages = list(row["messages"])  # type: ignore[call-overload]
    answer = messages[-1]["content"]
    return {"messages": messages[:-1], "chosen": answer, "rejected": rejected_answer(rng, answer)}


def main() -> None:
    rng = random.Random(20261126)
    seen: set[str] = set()
    rows: list[dict[str, object]] = []
    while len(rows) < 240:
        row = example(rng, rng.choice(sorted(TEMPLATES)))
        key = json.dumps(row, sort_keys=True)
        if key not in seen:  # no duplicates, and so no leakage between train, validation and test
            seen.add(key)
            rows.append(row)
    here = Path(__file__).parent
    # The first 200 rows are the same as before the test file existed (the generator draws in order).
    parts = {"train": rows[:160], "validation": rows[160:200], "test": rows[200:]}
    for name, part in parts.items():
        (here / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    # The same questions as preference pairs (examples/sft-then-dpo-*.yaml): the answer against a near miss.
    pairs = random.Random(20261207)
    for name, part in parts.items():
        text = "".join(json.dumps(preference_pair(pairs, r)) + "\n" for r in part)
        (here / f"preference-{name}.jsonl").write_text(text)


if __name__ == "__main__":
    main()
