"""Which kernel a tensor reaches on bertkit's CPU paths. Every such choice is made in `kernel()`.

A BertModel forward meets four choices: the whole encoder (the compiled kernels of `native/`, or the
layer-by-layer path), each Linear with its epilogue (MKL's packed
GEMM, oneDNN's GEMM with the bias, GELU or residual add inside, or the module's own forward),
attention (softmax, dropout and the product with V in one autograd step, or SDPA) and dropout (the
byte mask, or PyTorch's). The answer depends on the tensor (device, dtype, rows), the mode (training,
gradients, autocast, graph capture), what this PyTorch build has (MKL, oneDNN) and the settings
`optimize_for_cpu` gave the model; those settings are read here and nowhere else.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from ..device import cpu_vendor


@functools.cache
def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def mkl_packing_available() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def mkl_gemm_preferred() -> bool:
    """Whether small inputs should take MKL's GEMM (packed weights, the native encoder) rather than
    oneDNN's. MKL chooses its kernels by CPU vendor, oneDNN by instruction set: on an AMD EPYC (Zen 4,
    AVX-512) MKL's GEMMs took 7.8 ms of a one-sentence MiniLM forward where oneDNN's took 4.0
    (benchmarks/profile_ops.py, docs/benchmarks.md), while on the Intel Xeons MKL's packed GEMM was
    the faster one below 256 rows. So: MKL on Intel only; oneDNN everywhere else."""
    return cpu_vendor() == "GenuineIntel"


def graph_capture() -> bool:
    """Whether a tracer or compiler is recording the ops (then the plain ops must run, not a shortcut)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def _inference(x: torch.Tensor, autocast_ok: bool = False) -> bool:
    """x on the CPU, gradients off, no graph being recorded, and (unless `autocast_ok`) no CPU autocast
    region (`--precision bf16`: autocast's bf16 ops run, not the float32 kernels)."""
    return (x.device.type == "cpu" and not torch.is_grad_enabled() and not graph_capture()
            and (autocast_ok or not torch.is_autocast_enabled("cpu")))


def _cpu_autocast_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def kernel(op: str, x: torch.Tensor, module: nn.Module | None = None, *, p: float = 0.0, training: bool = False,
           lengths=None) -> str:
    """The kernel that `op` runs for input `x`: the first row of `op` whose conditions all hold.

    op           kernel       conditions
    -----------  -----------  -----------------------------------------------------------------------
    "encoder"    "native"     `module`: the model's native encoder (optimize_for_cpu attaches one
                              where the kernels built and take the model's shapes); its model in eval
                              mode; `x`: input ids (B, T), T <= the model's positions; `lengths`: the
                              real tokens of each row, all first in their row (None where a mask has a
                              gap), each >= 1, at most the encoder's `max_tokens` in all; inference
                              (below); the model's Linear layers plain float32 ones with a bias
                              (asked of the encoder, which looks again only after a parameter changed)
                 "native-bf16" the same inside a CPU autocast region of bfloat16 (`--precision bf16`),
                              where the CPU has AVX512_BF16 (the encoder's `bf16_supported`): its
                              matrix multiplies in bf16 with float32 sums, the rest in float32
                 "native-int8" the "native" conditions with the block Linear layers bertkit's Int8Linear
                              (`--quantize int8`), where the CPU has AVX512_VNNI (`int8_supported`)
                 "eager"      otherwise: BertModel's layer-by-layer path, which meets the rows below
    "linear"     "onednn"     `module` an nn.Linear with a float32 weight and a bias; `x` float32 with
                              more rows than the module's `packed_rows`; the module's `fuse`; inference;
                              oneDNN in this build (the epilogue is then part of the GEMM)
                 "packed"     `module` a PackedLinear in eval mode with at least as many `packed_rows`
                              as `x` has rows; float32 weight, bias and `x`; inference; MKL in this build
                 "module"     otherwise: the module's own forward (a plain, quantized or GPU Linear),
                              then the epilogue as plain ops
    "attention"  "eager"      `training`, dropout `p` > 0, `x` on the CPU (PyTorch's SDPA has no fused
                              CPU kernel with dropout): scores, mask and softmax, then "dropout"'s choice
                 "sdpa"       otherwise: F.scaled_dot_product_attention
    "dropout"    "byte_mask"  `training`, 0 < `p` < 1, `x` float32 on the CPU (dropout.py)
                 "torch"      otherwise: PyTorch's dropout

    inference: `x` on the CPU, gradients off, no CPU autocast region (but for "native-bf16"), no tracing,
    scripting or compiling.
    `packed_rows` and `fuse` are a PackedLinear's own settings (its constructor's arguments, which
    `optimize_for_cpu` passes on); a plain nn.Linear has none packed and fuses.
    """
    if op == "linear":
        if not (_inference(x) and x.dtype == torch.float32 and isinstance(module, nn.Linear)
                and module.bias is not None and module.weight.dtype == torch.float32):
            return "module"
        rows, packed_rows = math.prod(x.shape[:-1]), getattr(module, "packed_rows", 0)
        if rows > packed_rows:
            return "onednn" if getattr(module, "fuse", True) and onednn_available() else "module"
        return "packed" if packed_rows and not module.training and mkl_packing_available() else "module"
    if op == "dropout":
        return "byte_mask" if training and 0.0 < p < 1.0 and x.device.type == "cpu" and x.dtype == torch.float32 else "torch"
    if op == "attention":
        return "eager" if training and p > 0 and x.device.type == "cpu" else "sdpa"
    if op == "encoder":
        bert = module.bert
        if (bert.training or x.dim() != 2 or not lengths or min(lengths) < 1 or sum(lengths) > module.max_tokens
                or x.shape[1] > bert.config.max_position_embeddings or not _inference(x, autocast_ok=True)):
            return "eager"
        weights = module.current_weights()
        if weights is None:
            return "eager"
        if torch.is_autocast_enabled("cpu"):
            return "native-bf16" if _cpu_autocast_bf16() and weights.kind == "fp32" and module.bf16_supported else "eager"
        if weights.kind == "int8":
            return "native-int8" if module.int8_supported else "eager"
        return "native"
    raise ValueError(f"no kernel choice for {op!r}")
