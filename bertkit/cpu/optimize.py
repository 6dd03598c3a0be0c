"""`optimize_for_cpu`: the one entry point to bertkit's CPU inference speed-ups (see __init__.py)."""

from __future__ import annotations

import torch.nn as nn

from .dispatch import mkl_gemm_preferred
from .native.encoder import MAX_TOKENS, attach_native_encoder
from .packed_linear import PACKED_ROWS, pack_linear_weights


def optimize_for_cpu(model: nn.Module, *, native: bool | None = None, max_tokens: int = MAX_TOKENS,
                     packed_rows: int | None = None, fuse: bool = True) -> nn.Module:
    """Make `model` (in place) fast for float32 inference on this CPU; returns `model`.

    `native` and `packed_rows` left as None take this CPU's measured choice: both MKL-based pieces
    (packed rows up to PACKED_ROWS, the native encoder) on Intel, where MKL was the faster GEMM for
    small inputs; neither elsewhere (AMD), where oneDNN's GEMM is (`dispatch.mkl_gemm_preferred`).

    - Every nn.Linear becomes a PackedLinear (the same Parameters; the state dict is unchanged):
      MKL's packed GEMM for inputs of up to `packed_rows` rows (0: never), oneDNN's GEMM with the
      bias, GELU or residual add inside above them if `fuse` (a plain model fuses too; `fuse=False`
      keeps plain addmm, for comparisons).
    - With `native`, every BertModel inside gets the compiled encoder kernels as `cpu_encoder` for
      unpadded inputs of up to `max_tokens` tokens (compiled now, once per machine). Where they
      cannot be built or do not take the model's shapes, it gets none and the layer-by-layer path
      runs; `native=False` removes one.

    Training, saving, GPU, bf16 and padded inputs keep the model's own path; `dispatch.kernel` has
    the conditions. `bertkit serve`'s PyTorch backend calls this with the defaults."""
    mkl = mkl_gemm_preferred()
    native = mkl if native is None else native
    pack_linear_weights(model, (PACKED_ROWS if mkl else 0) if packed_rows is None else packed_rows, fuse)
    for m in model.modules():
        if hasattr(m, "cpu_encoder"):  # a BertModel: bertkit.cpu does not import bertkit.model
            m.cpu_encoder = None
            if native:
                attach_native_encoder(m, max_tokens)
    return model
