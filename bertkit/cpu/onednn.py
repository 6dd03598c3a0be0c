"""Linear layers with their bias, activation or residual add inside the GEMM, for CPU inference.

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
step, a load: see weight_versions.py).
The fused path is taken only for float32 tensors on the CPU with gradients off, outside autocast
(bf16), and outside tracing and compiling (the graph exporters see plain ops); everywhere else the same plain ops run.
Up to 256 rows `PackedLinear`'s MKL path is faster and takes precedence (`fuse_above_rows`).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weight_versions import weight_key

PACK_FOR_ROWS = 64  # oneDNN's re-layout takes a typical row count as a hint; any row count works after

# config.hidden_act -> (the PyTorch function, oneDNN's post-op and its algorithm)
ACTIVATIONS = {
    "gelu": (F.gelu, "gelu", "none"),  # exact (erf) GELU, as in the original BERT
    "gelu_new": (lambda x: F.gelu(x, approximate="tanh"), "gelu", "tanh"),
    "gelu_pytorch_tanh": (lambda x: F.gelu(x, approximate="tanh"), "gelu", "tanh"),
    "relu": (F.relu, "relu", ""),
}


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def graph_capture() -> bool:
    """Whether a tracer or compiler is recording the ops (then the plain ops must run, not a shortcut)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def cpu_autocast() -> bool:
    """Whether a CPU autocast region (`--precision bf16`) is active: then the fp32-only kernels here
    and in packed_linear.py / scripted_encoder.py step aside and autocast's bf16 ops run."""
    return torch.is_autocast_enabled("cpu")


def can_fuse(x: torch.Tensor, *linears: nn.Module, activation: str | None = None) -> bool:
    """Whether `fused_linear` will take oneDNN's fused path for 2-D input `x` through `linears`. A
    Linear can ask for its own path up to `fuse_above_rows` rows (`PackedLinear` does)."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() and not cpu_autocast()
        and (activation is None or activation in ACTIVATIONS) and not graph_capture() and onednn_available()
        and all(isinstance(m, nn.Linear) and m.bias is not None and m.weight.dtype == torch.float32
                and x.shape[0] > getattr(m, "fuse_above_rows", 0) for m in linears)
    )


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


def fused_linear(linear: nn.Linear, x: torch.Tensor, activation: str | None = None,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """act(linear(x)) or residual + linear(x) for 2-D `x`: one oneDNN call where `can_fuse`, else the
    module's own forward (a packed, quantized or GPU Linear) and the plain ops."""
    if activation is not None and residual is not None:
        raise ValueError("an activation and a residual add cannot both be fused")
    if not can_fuse(x, linear, activation=activation):
        y = linear(x)
        if activation is not None:
            return ACTIVATIONS[activation][0](y)
        return y if residual is None else residual + y
    if residual is not None:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, _onednn_weight(linear), linear.bias, "add")
    _, attr, algorithm = ACTIVATIONS[activation] if activation is not None else (None, "none", "")
    return torch.ops.mkldnn._linear_pointwise(x, _onednn_weight(linear), linear.bias, attr, [], algorithm)
