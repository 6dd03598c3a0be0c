"""Dropout for CPU training with a cheaper random mask, and attention's softmax-dropout-matmul in one step.

On the CPU, PyTorch's dropout draws its mask with `bernoulli_` (one random number per element),
multiplies by it and divides; in attention the SDPA math path adds masked-softmax bookkeeping on top.
On the attention probabilities of a SQuAD training batch (batch x heads x T x T, 10.7M elements for
16 windows of 236 tokens) that is ~115 ms per layer at one thread, about as long as the layer's
forward matrix multiplies. Here:

- `drop_mask` takes one random *byte* per element (8 per 64-bit draw of torch's own generator, so
  `torch.manual_seed` and saved RNG states cover it) and drops the element when the byte is below
  floor(256 p). The 1 in 256 elements whose byte equals floor(256 p) get a second, float64 draw and
  are dropped when it is below the remainder 256 p - floor(256 p). So P(drop) is p exactly (to
  float64 precision), not a multiple of 1/256, at about a third of `bernoulli_`'s cost.
- The mask is applied with `masked_fill` and the 1 / (1 - p) scale goes where it is cheapest: on the
  (T x head_dim) attention output instead of the (T x T) probabilities.

`byte_mask_dropout` is inverted dropout on that mask; `softmax_dropout_matmul` is softmax(scores) ->
dropout -> @ v with its own backward. They run where `dispatch.kernel` says "byte_mask" (CPU float32
training); `ops.dropout`, `ops.Dropout` and `ops.attention` are the drop-ins that ask it, with
PyTorch's own ops everywhere else.
"""

from __future__ import annotations

import math

import torch

_INT64_MIN = torch.iinfo(torch.int64).min


def drop_mask(shape, p: float, device=None) -> torch.Tensor:
    """A bool tensor of `shape`, each entry True (drop) with probability p, independently."""
    n = math.prod(shape)
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device).random_(_INT64_MIN, None)  # all 64 bits
    random_bytes = words.view(torch.uint8)[:n]
    scaled = p * 256
    whole = int(scaled)
    drop = random_bytes < whole
    ties = (random_bytes == whole).nonzero().squeeze(1)
    if len(ties):
        drop[ties] = torch.rand(len(ties), dtype=torch.float64, device=device) < scaled - whole
    return drop.view(shape)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, drop, scale):
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.masked_fill(drop, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0.0).mul_(ctx.scale), None, None


def byte_mask_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout of `x` at rate 0 < p < 1 on the byte mask."""
    return _Dropout.apply(x, drop_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class _AttentionWithDropout(torch.autograd.Function):
    """out = (softmax(scores) masked by `drop`) @ v * scale, for 3-D (batch, T, T) scores."""

    @staticmethod
    def forward(ctx, scores, v, drop, scale):
        probs = torch.softmax(scores, dim=-1)
        kept = probs.masked_fill(drop, 0.0)
        ctx.save_for_backward(probs, kept, v, drop)
        ctx.scale = scale
        return torch.bmm(kept, v).mul_(scale)

    @staticmethod
    def backward(ctx, grad_out):
        probs, kept, v, drop = ctx.saved_tensors
        grad_out = grad_out * ctx.scale
        grad_v = torch.bmm(kept.transpose(1, 2), grad_out)
        grad_probs = torch.bmm(grad_out, v.transpose(1, 2)).masked_fill_(drop, 0.0)
        return torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype), grad_v, None, None


def softmax_dropout_matmul(scores: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(softmax(scores, -1), p) @ v on the byte mask, for scores (..., T, S), v (..., S, D), 0 < p < 1."""
    lead = scores.shape[:-2]
    scores3, v3 = scores.reshape(-1, *scores.shape[-2:]), v.reshape(-1, *v.shape[-2:])
    out = _AttentionWithDropout.apply(scores3, v3, drop_mask(scores3.shape, p, scores.device), 1.0 / (1.0 - p))
    return out.view(*lead, *out.shape[-2:])
