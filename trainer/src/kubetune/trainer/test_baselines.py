"""Few-shot prompts hold the most similar training examples; the verdict sentence matches the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.status import ApproachResult, EvaluationResult
from kubetune.trainer.baselines import few_shot_record, summary, verdict
from kubetune.trainer.data import Record
from kubetune.trainer.retrieval import model_embeddings, nearest, query_text, sentence_embeddings

pytestmark = pytest.mark.timeout(120)

TRAIN = [
    "My kettle from order 123 arrived broken, I want a refund.",
    "The tracking number for my shoes has not moved in a week.",
    "I cannot log in to my account since Monday.",
    "The app crashes when I open the settings page.",
    "Please change the email address on my account.",
    "Bluetooth pairing fails with my headphones.",
]
# Each query is a planted near-duplicate of one training example (reworded), which must come first.
QUERIES = {
    "I cannot log into my account since Tuesday.": 2,
    "The application crashes whenever I open the settings page.": 3,
    "My kettle (order 555) arrived broken and I want my money refunded.": 0,
}


def chat(user: str, answer: str = "x") -> Record:
    return Record({"messages": [{"role": "system", "content": "triage"}, {"role": "user", "content": user},
                                {"role": "assistant", "content": answer}]}, "t.jsonl", 1)  # fmt: skip


def test_sentence_embeddings_retrieve_the_planted_near_duplicates_first() -> None:
    keys = sentence_embeddings(TRAIN)
    found = nearest(sentence_embeddings(list(QUERIES)), keys, k=3)
    assert [row[0] for row in found] == list(QUERIES.values())
    assert all(len(row) == 3 and len(set(row)) == 3 for row in found)


def test_base_model_embeddings_retrieve_exact_duplicates_first(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tiny_model
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    keys = model_embeddings(model, tokenizer, TRAIN)
    found = nearest(model_embeddings(model, tokenizer, [TRAIN[4], TRAIN[1]]), keys, k=2)
    assert [row[0] for row in found] == [4, 1]


def test_few_shot_chat_prompt_puts_the_shots_after_the_system_message() -> None:
    shots = [chat("first question", "A"), chat("second question", "B")]
    record = few_shot_record(chat("real question"), shots, "chat")
    roles = [(m["role"], m["content"]) for m in record.fields["messages"]]
    assert roles == [
        ("system", "triage"), ("user", "first question"), ("assistant", "A"), ("user", "second question"),
        ("assistant", "B"), ("user", "real question"), ("assistant", "x"),
    ]  # fmt: skip
    assert query_text(record, "chat") == "real question"


def test_few_shot_prompt_completion_prompt() -> None:
    shot = Record({"prompt": "Q: a\nA:", "completion": " 1"}, "t.jsonl", 1)
    record = few_shot_record(
        Record({"prompt": "Q: b\nA:", "completion": " 2"}, "t.jsonl", 2), [shot], "prompt-completion"
    )
    assert record.fields == {"prompt": "Q: a\nA: 1\n\nQ: b\nA:", "completion": " 2"}
    with pytest.raises(ValueError, match="no"):
        few_shot_record(Record({"text": "t"}, "t.jsonl", 1), [], "text")


def row(name: str, exact: float | None, latency: float, parameters: int, loss: float = 1.0) -> ApproachResult:
    approach = (
        "fine-tuned" if name == "fine-tuned" else ("few-shot" if "shot" in name and "0" not in name else "zero-shot")
    )
    return ApproachResult(name=name, approach=approach, model=name.split()[0], exact_match=exact, eval_loss=loss,
                          latency_seconds=latency, parameters=parameters)  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "sentence"),
    [
        (
            [row("base 0-shot", 0.0, 0.5, 135_000_000), row("base 4-shot", 0.41, 1.2, 135_000_000),
             row("reference 4-shot", 0.8, 1.5, 1_700_000_000), row("fine-tuned", 0.97, 0.5, 135_000_000)],
            "fine-tuning paid off: 0.97 vs 0.80 exact match for reference 4-shot (1.7 B parameters; fine-tuned "
            "135 M), at 1/3.0 of its latency",
        ),
        (
            [row("base 0-shot", 0.1, 0.5, 135_000_000), row("base 4-shot", 0.6, 2.0, 135_000_000), row("fine-tuned", 0.3, 0.5, 135_000_000)],
            "fine-tuning did not pay off: 0.30 vs 0.60 exact match for base 4-shot, at 1/4.0 of its latency",
        ),
        (  # a diverged run: the fine-tuned model is the worst of all, and still the one compared
            [row("base 0-shot", 0.25, 0.5, 5_000), row("base 4-shot", 0.75, 1.0, 5_000), row("fine-tuned", 0.0, 0.5, 5_000)],
            "fine-tuning did not pay off: 0.00 vs 0.75 exact match for base 4-shot, at 1/2.0 of its latency",
        ),
        (
            [row("base 4-shot", 0.75, 1.0, 5_000), row("fine-tuned", 1.0, 2.0, 5_000)],
            "fine-tuning paid off: 1.00 vs 0.75 exact match for base 4-shot, at 2.0x its latency",
        ),
        (
            [row("base 4-shot", 1.0, 1.0, 5_000), row("fine-tuned", 1.0, 0.0, 5_000)],
            "fine-tuning only matched prompting: 1.00 vs 1.00 exact match for base 4-shot",
        ),
        (
            [row("base 0-shot", None, 0.0, 5_000, loss=3.0), row("fine-tuned", None, 0.0, 5_000, loss=0.5)],
            "fine-tuning paid off: 0.5 vs 3 eval loss for base 0-shot",
        ),
        (
            [row("base 0-shot", None, 0.0, 5_000, loss=3.0), row("fine-tuned", None, 0.0, 5_000, loss=float("nan"))],
            "fine-tuning did not pay off: nan vs 3 eval loss for base 0-shot",
        ),
        (
            [row("base 0-shot", 0.1, 0.5, 5_000), row("base 4-shot", 0.6, 2.0, 5_000)],
            "base 4-shot (5 k) reaches 0.60 exact match (the fine-tuned model was not evaluated)",
        ),
        ([], "no approach was evaluated"),
    ],
)  # fmt: skip
def test_the_verdict_places_the_fine_tuned_model_against_the_best_prompt(
    rows: list[ApproachResult], sentence: str
) -> None:
    assert verdict(rows) == sentence


@pytest.mark.parametrize(
    ("scored_on", "said"),
    [
        ("test", "; scored on 40 test examples that no training decision saw"),
        ("validation", "; scored on the 40 validation examples that also chose the checkpoint, so the fine-tuned"),
    ],
)
def test_the_verdict_says_which_set_scored_it(scored_on: str, said: str) -> None:
    rows = [row("base 4-shot", 0.75, 1.0, 5_000)]
    tuned = EvaluationResult(exact_match=1.0, latency_seconds=1.0)
    result = summary(None, tuned, rows, 5_000, scored_on, 40)
    assert result.scored_on == scored_on and result.verdict is not None
    assert result.verdict.startswith("fine-tuning paid off: 1.00 vs 0.75 exact match for base 4-shot")
    assert said in result.verdict


def preference_row(name: str, accuracy: float, exact: float, chosen: float | None = None) -> ApproachResult:
    approach = "fine-tuned" if name == "fine-tuned" else "zero-shot"
    model = "fine-tuned" if name == "fine-tuned" else "base"
    return ApproachResult(
        name=name, approach=approach, model=model, preference_accuracy=accuracy, exact_match=exact, chosen_reward=chosen
    )


@pytest.mark.parametrize(
    ("rows", "sentence"),
    [
        (
            [preference_row("reference", 0.70, 0.35), preference_row("fine-tuned", 0.75, 0.40, -0.1)],
            "fine-tuning paid off: 0.75 vs 0.70 preference accuracy for reference",
        ),
        (
            [preference_row("reference", 0.70, 0.35), preference_row("fine-tuned", 0.80, 0.0, -1.3)],
            "fine-tuning paid off: 0.80 vs 0.70 preference accuracy for reference; but its exact match fell to 0.00 "
            "from 0.35 for reference (the chosen answers lost likelihood too: a higher method.dpo.beta, a lower "
            "learning rate or fewer steps keep the policy closer to its reference)",
        ),
        (
            [preference_row("reference", 0.70, 0.35), preference_row("fine-tuned", 0.80, 0.30, 0.2)],
            "fine-tuning paid off: 0.80 vs 0.70 preference accuracy for reference; but its exact match fell to 0.30 "
            "from 0.35 for reference",
        ),
    ],
)  # fmt: skip
def test_a_preference_verdict_warns_when_the_answers_got_worse(rows: list[ApproachResult], sentence: str) -> None:
    assert verdict(rows) == sentence
