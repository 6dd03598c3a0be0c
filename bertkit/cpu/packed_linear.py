"""Packed weights for CPU inference: MKL's packed GEMM under every nn.Linear, same numbers, less time.

Nearly all of BERT's inference time on a CPU is its Linear layers' matrix multiplies, and for the
few-token inputs of one short sentence PyTorch's plain `addmm` leaves much of the CPU's speed
unused. MKL can re-layout ("pack") a weight matrix once for its GEMM kernels; every multiply after
that skips the re-layout. Measured on the project machine for one MiniLM feed-forward layer
(25 tokens x 384 -> 1536, 1 thread): addmm 702 us, packed 465 us, ONNX Runtime's Gemm 453 us, with
bit-identical results. For a whole MiniLM forward on one sentence the gain is smaller (+6%, see
docs/benchmarks.md), and for large inputs there is none, so only inputs of up to PACKED_MAX_ROWS
tokens take the packed path. `bertkit serve`'s PyTorch backend uses it.

    from bertkit.packed_linear import pack_linear_weights
    pack_linear_weights(model)        # in place; the model still trains and saves as before

The swap is safe to leave in: a `PackedLinear` keeps `weight` and `bias` as its parameters (the
state dict is unchanged), uses the packed copy only under `torch.no_grad()` / `inference_mode()` in
eval mode on CPU float32, and re-packs when the weight has been changed in place (an optimizer step,
a load). Where PyTorch was built without MKL the function leaves the model as it is.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused_linear import cpu_autocast
from .weight_versions import weight_key

PACK_FOR_ROWS = 64  # MKL's packing takes a typical row count as a hint; any row count works after
# Above this many rows (tokens) plain addmm is as fast (benchmarks/bench_onnx.py, 1 thread, SST-2 dev:
# +6% for single sentences, -3% for batches of 32 sentences, ~800 rows), so the packed GEMM is used
# for small inputs only.
PACKED_MAX_ROWS = 256


def mkl_packing_available() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class PackedLinear(nn.Linear):
    # Up to PACKED_MAX_ROWS rows MKL's packed GEMM beats oneDNN's fused Linear + GELU / + residual
    # (fused_linear.py) on a whole MiniLM forward: one sentence 4.4 against 5.0 ms (2 threads).
    fuse_above_rows = PACKED_MAX_ROWS

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: shared, not copied
        self.register_buffer("packed_weight", torch.empty(0), persistent=False)
        self._packed_from = None  # weight_key of the weight the packed copy was made from
        self.train(linear.training)

    def _packed(self) -> torch.Tensor:
        key = weight_key(self.weight)
        if self._packed_from != key:
            with torch.no_grad():
                self.packed_weight = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), PACK_FOR_ROWS)
            self._packed_from = key
        return self.packed_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or self.weight.dtype != torch.float32 or self.bias is None or cpu_autocast()):
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > PACKED_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        out = torch.ops.mkl._mkl_linear(flat, self._packed(), self.weight, self.bias, flat.shape[0])
        return out.view(*x.shape[:-1], self.out_features)


def pack_linear_weights(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear of `model` (in place) for a PackedLinear; returns `model`."""
    if not mkl_packing_available():
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
    return model
