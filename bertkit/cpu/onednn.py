"""oneDNN's Linear with its bias, activation or residual add inside the GEMM, for CPU inference.

In a BERT layer at inference, three of the four matrix multiplies are followed by a pass over their
whole output: GELU after the feed-forward's first Linear, and the residual add after the attention
output projection and after the feed-forward's second Linear. Each pass reads and writes a
(tokens x width) tensor that the GEMM has just written, and `addmm` itself first copies the bias
into every output row. oneDNN (bundled with PyTorch's CPU builds as `mkldnn`) does all of that
in the GEMM's epilogue while the output tile is still in cache: `torch.ops.mkldnn._linear_pointwise`,
the kernel `torch.compile`'s CPU backend emits for Linear + GELU and Linear + add. The results equal
`F.gelu(F.linear(...))` and `F.linear(...) + residual` up to float32 rounding (the bias is added
after the products instead of before them; tests/test_fused_linear.py checks 1e-6 per layer).

The weight is re-laid out once for oneDNN and cached beside the Linear module (not in it, so the
model still deep-copies and pickles); the cache is rebuilt when the weight changes (an optimizer
step, a load: see weight_cache.py). `ops.linear` calls this where `dispatch.kernel` says "onednn":
float32 CPU inference outside autocast and graph capture, and above a PackedLinear's packed rows.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn

from .weight_cache import PACK_FOR_ROWS, weight_key

# Linear -> (weight_key, oneDNN weight). Kept beside the modules, not on them: a oneDNN tensor has no
# storage that `copy.deepcopy` or pickling could copy, and a cache is no part of the model anyway.
_onednn_weights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _onednn_weight(linear: nn.Linear) -> torch.Tensor:
    key = weight_key(linear.weight)
    cached = _onednn_weights.get(linear)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = key, torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_FOR_ROWS)
        _onednn_weights[linear] = cached
    return cached[1]


def linear_pointwise(linear: nn.Linear, x: torch.Tensor, residual: torch.Tensor | None = None,
                     post_op: str = "none", algorithm: str = "") -> torch.Tensor:
    """residual + linear(x), or post_op(linear(x)) (oneDNN's post-op name and algorithm), in one
    oneDNN call, for 2-D float32 `x`. No checks: the caller has asked `dispatch.kernel`."""
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, _onednn_weight(linear), linear.bias, "add")
    return torch.ops.mkldnn._linear_pointwise(x, _onednn_weight(linear), linear.bias, post_op, [], algorithm)
