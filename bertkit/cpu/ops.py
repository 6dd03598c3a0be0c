"""The CPU speed work as the model sees it: the few operations `bertkit/model.py` calls.

- `linear(module, x, activation=None, residual=None)`: act(module(x)) or residual + module(x), with
  the epilogue inside the GEMM where oneDNN runs it (onednn.py), MKL's packed GEMM for the small
  inputs of a PackedLinear (packed_linear.py), the module's own forward otherwise;
- `attention(q, k, v, key_mask, p, training)`: softmax(q k^T / sqrt(d) + mask) -> dropout -> @ v, in
  one autograd step with the byte-mask dropout for CPU training (dropout.py), SDPA otherwise;
- `dropout` / `Dropout`: drop-ins for `F.dropout` / `nn.Dropout` on the byte mask in CPU training;
- `ACTIVATIONS`: config.hidden_act -> the PyTorch function and its oneDNN and native-kernel forms;
- `graph_capture()`, `fit_threads()`: whether export is recording ops; the thread count per call.

Which kernel runs is decided in one place, `dispatch.kernel` (its docstring has the table), and each
choice gives the same numbers as the plain ops up to float32 rounding. The model's own code stays
the published architecture; everything CPU-specific sits behind these names.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dispatch import graph_capture, kernel
from .dropout import byte_mask_dropout, softmax_dropout_matmul
from .onednn import linear_pointwise
from .threads import fit_threads


class Activation(NamedTuple):
    fn: Callable[[torch.Tensor], torch.Tensor]  # the PyTorch function
    onednn: str  # oneDNN's post-op ...
    onednn_algorithm: str  # ... and its algorithm
    native: int  # its code in native/encoder.cpp


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# config.hidden_act -> its forms; the keys are config.ACTIVATIONS (tests/test_cpu_ops.py checks it)
ACTIVATIONS = {
    "gelu": Activation(F.gelu, "gelu", "none", 0),  # exact (erf) GELU, as in the original BERT
    "gelu_new": Activation(_gelu_tanh, "gelu", "tanh", 1),
    "gelu_pytorch_tanh": Activation(_gelu_tanh, "gelu", "tanh", 1),
    "relu": Activation(F.relu, "relu", "", 2),
}


def linear(module: nn.Module, x: torch.Tensor, activation: str | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """act(module(x)) or residual + module(x) for 2-D `x`; `activation` a config.hidden_act name."""
    if activation is not None and residual is not None:
        raise ValueError("an activation and a residual add cannot both be fused")
    path = kernel("linear", x, module)
    if path == "onednn":
        if activation is None:
            return linear_pointwise(module, x, residual)
        act = ACTIVATIONS[activation]
        return linear_pointwise(module, x, post_op=act.onednn, algorithm=act.onednn_algorithm)
    y = module.packed_forward(x) if path == "packed" else module(x)
    if activation is not None:
        return ACTIVATIONS[activation].fn(y)
    return y if residual is None else residual + y


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, p: float,
              training: bool) -> torch.Tensor:
    """Scaled dot-product attention of q, k, v (B, heads, T, head_dim), with dropout `p` on the
    probabilities while `training`; `key_mask` (B, 1, 1, T) bool (True: a real key) or None."""
    if kernel("attention", q, p=p, training=training) == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p if training else 0.0)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, heads, T, T)
    if key_mask is not None:
        scores.add_(scores.new_zeros(key_mask.shape).masked_fill_(~key_mask, float("-inf")))
    if kernel("dropout", scores, p=p, training=training) == "byte_mask":
        return softmax_dropout_matmul(scores, v, p)
    return torch.matmul(F.dropout(torch.softmax(scores, dim=-1), p, training), v)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout, as `F.dropout(x, p, training)`."""
    if kernel("dropout", x, p=p, training=training) == "byte_mask":
        return byte_mask_dropout(x, p)
    return F.dropout(x, p, training)


class Dropout(nn.Dropout):
    """`nn.Dropout` (the same `p`, no state) on the byte mask where it applies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


__all__ = ["ACTIVATIONS", "Activation", "Dropout", "attention", "dropout", "fit_threads", "graph_capture", "linear"]
