"""The chunked LM head + cross-entropy equals the plain one: loss and gradients, any chunk size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kubetune.trainer.chunked_loss import chunk_tokens, linear_cross_entropy_sum


def plain(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.t()).float()
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def case(
    tokens: int = 37, size: int = 24, vocabulary: int = 101, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, size, generator=generator).to(dtype).requires_grad_()
    weight = (torch.randn(vocabulary, size, generator=generator) * 0.3).to(dtype).requires_grad_()
    targets = torch.randint(0, vocabulary, (tokens,), generator=generator)
    targets[::5] = -100
    return hidden, weight, targets


def gradients(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize("chunk", [1, 7, 16, 37, 1000])
def test_equals_the_plain_loss_and_its_gradients(chunk: int) -> None:
    hidden, weight, targets = case()
    expected = plain(hidden, weight, targets)
    got = linear_cross_entropy_sum(hidden, weight, targets, chunk)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(
        gradients(got * 0.37, hidden, weight), gradients(expected * 0.37, hidden, weight), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_bf16_stays_as_close_as_the_plain_bf16_loss() -> None:
    hidden, weight, targets = case(dtype=torch.bfloat16)
    got = linear_cross_entropy_sum(hidden, weight, targets, 8)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.detach(), plain(hidden, weight, targets).detach(), rtol=1e-3, atol=1e-3)
    mine, theirs = gradients(got, hidden, weight), gradients(plain(hidden, weight, targets), hidden, weight)
    assert [g.dtype for g in mine] == [torch.bfloat16, torch.bfloat16]
    for left, right in zip(mine, theirs, strict=True):
        torch.testing.assert_close(left.float(), right.float(), rtol=2e-2, atol=2e-3)


def test_a_frozen_head_gets_no_gradient_and_tied_weights_get_both() -> None:
    hidden, weight, targets = case()
    frozen = weight.detach()
    (grad_hidden,) = gradients(linear_cross_entropy_sum(hidden, frozen, targets, 8), hidden)
    torch.testing.assert_close(grad_hidden, gradients(plain(hidden, frozen, targets), hidden)[0])
    # Tied: the head's weight is also the embedding table the hidden states come from.
    ids = targets.clamp(min=0)
    mine = linear_cross_entropy_sum(torch.tanh(weight[ids]), weight, targets, 8)
    theirs = plain(torch.tanh(weight[ids]), weight, targets)
    torch.testing.assert_close(gradients(mine, weight)[0], gradients(theirs, weight)[0], rtol=1e-5, atol=1e-6)


def test_no_scored_token_is_a_zero_loss_with_zero_gradients() -> None:
    hidden, weight, targets = case()
    got = linear_cross_entropy_sum(hidden, weight, torch.full_like(targets, -100), 8)
    assert float(got.detach()) == 0.0
    assert all(float(g.abs().sum()) == 0.0 for g in gradients(got, hidden, weight))


@pytest.mark.parametrize(("vocabulary", "tokens"), [(49_152, 682), (128_256, 261), (400, 83_886), (10**9, 16)])
def test_chunk_tokens_keeps_a_chunk_near_32_million_logits(vocabulary: int, tokens: int) -> None:
    assert chunk_tokens(vocabulary) == tokens
