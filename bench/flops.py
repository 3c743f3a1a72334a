"""Model FLOPs utilisation (MFU) of a Llama-style decoder, with attention counted.

Training FLOPs per token, as in the PaLM paper (Chowdhery et al. 2022, appendix B):

    6 N + 12 L d S

- N: parameters that take part in a matrix multiply per token: per layer the four attention
  projections (q, k, v, o: 2 d^2 + 2 d d_kv) and the three MLP matrices (3 d f), plus the output head
  (V d). The input embedding is a lookup, not a multiply, so it is not counted (with tied embeddings
  the shared matrix is counted once, as the head). 6 = 2 FLOPs per multiply-add x (forward + 2 x backward).
- 12 L d S: attention scores and the weighted sum (QK^T and AV, 2 x 2 d S per token and layer forward,
  x3 with the backward), with S the sequence length; the causal mask is not subtracted, as in PaLM.

MFU = tokens/s per accelerator x FLOPs per token / the accelerator's peak dense bf16 FLOP/s
(`kubetune.trainer.metrics.PEAK_FLOPS`: 989 TFLOP/s for an H100 SXM). kubetune's own
`kubetune_mfu_ratio` gauge uses 6 N only; the benchmark adds the attention term.
"""

from __future__ import annotations

from bench.workload import ModelSize

FORMULA = "tokens/s per GPU x (6 N + 12 L d S) / peak bf16 FLOP/s (PaLM appendix B; bench/flops.py)"


def matmul_parameters(size: ModelSize, vocab: int) -> int:
    """N: the parameters multiplied per token (see the module docstring)."""
    d, f = size.hidden, size.intermediate
    kv = d  # num_key_value_heads == num_attention_heads in the benchmark's models
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f
    return size.layers * per_layer + vocab * d


def flops_per_token(size: ModelSize, vocab: int, seq_length: int) -> float:
    return 6.0 * matmul_parameters(size, vocab) + 12.0 * size.layers * size.hidden * seq_length


def mfu(tokens_per_second_per_device: float, size: ModelSize, vocab: int, seq_length: int, peak: float) -> float:
    return tokens_per_second_per_device * flops_per_token(size, vocab, seq_length) / peak
