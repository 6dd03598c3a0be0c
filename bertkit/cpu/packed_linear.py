"""Packed weights for CPU inference: MKL's packed GEMM under every nn.Linear, same numbers, less time.

Nearly all of BERT's inference time on a CPU is its Linear layers' matrix multiplies, and for the
few-token inputs of one short sentence PyTorch's plain `addmm` leaves much of the CPU's speed
unused. MKL can re-layout ("pack") a weight matrix once for its GEMM kernels; every multiply after
that skips the re-layout. Measured on the project machine for one MiniLM feed-forward layer
(25 tokens x 384 -> 1536, 1 thread): addmm 702 us, packed 465 us, ONNX Runtime's Gemm 453 us, with
bit-identical results. For a whole MiniLM forward on one sentence the gain is smaller (+6%, see
docs/benchmarks.md), and for large inputs there is none, so only inputs of up to `packed_rows`
tokens take the packed path. `optimize_for_cpu` (bertkit/cpu/__init__.py) swaps the layers in.

The swap is safe to leave in: a `PackedLinear` keeps `weight` and `bias` as its parameters (the
state dict is unchanged), uses the packed copy only under `torch.no_grad()` / `inference_mode()` in
eval mode on CPU float32 (`dispatch.kernel`, "linear"), and re-packs when the weight has been
changed in place (an optimizer step, a load).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dispatch import kernel, mkl_packing_available
from .weight_cache import PACK_FOR_ROWS, weight_key

# Up to this many rows (tokens) the packed GEMM is the faster one. Above it plain addmm is as fast
# (benchmarks/bench_onnx.py, 1 thread, SST-2 dev: +6% for single sentences, -3% for batches of 32
# sentences, ~800 rows), and oneDNN's fused Linear + GELU / + residual (onednn.py) is faster; below
# it the packed GEMM beats the fused one too on a whole MiniLM forward: one sentence 4.4 against
# 5.0 ms (2 threads).
PACKED_ROWS = 256


class PackedLinear(nn.Linear):
    """An nn.Linear (the same Parameters) with its CPU kernel settings: MKL's packed GEMM for inputs
    of up to `packed_rows` rows (0: never), oneDNN's fused GEMM above them if `fuse`."""

    def __init__(self, linear: nn.Linear, packed_rows: int = PACKED_ROWS, fuse: bool = True):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: shared, not copied
        self.packed_rows, self.fuse = packed_rows, fuse
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

    def packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """linear(x) through MKL's packed GEMM. No checks: the caller has asked `dispatch.kernel`."""
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkl._mkl_linear(flat, self._packed(), self.weight, self.bias, flat.shape[0])
        return out.view(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernel("linear", x, self) == "packed":
            return self.packed_forward(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packed_rows={self.packed_rows}, fuse={self.fuse}"


def pack_linear_weights(model: nn.Module, packed_rows: int = PACKED_ROWS, fuse: bool = True) -> nn.Module:
    """Give every nn.Linear of `model` (in place) these settings, as a PackedLinear; returns `model`.
    Without MKL no layer packs (`packed_rows` 0). A plain nn.Linear already has the settings
    (0, True), so those alone swap nothing; a PackedLinear takes the new ones."""
    if not mkl_packing_available():
        packed_rows = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                child.packed_rows, child.fuse = packed_rows, fuse
            elif type(child) is nn.Linear and (packed_rows or not fuse):
                setattr(parent, name, PackedLinear(child, packed_rows, fuse))
    return model
