"""`optimize_for_cpu`: the one entry point to bertkit's CPU inference speed-ups (see __init__.py), and
`inference_path`: the line that says which path a model takes on this CPU, and why."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..device import cpu_flags, cpu_vendor
from ..errors import BertkitError
from .dispatch import mkl_gemm_preferred
from .native.encoder import MAX_TOKENS, attach_native_encoder, kernels_apply, kernels_state, load_kernels
from .packed_linear import PACKED_ROWS, pack_linear_weights


def optimize_for_cpu(model: nn.Module, *, native: bool = True, max_tokens: int = MAX_TOKENS,
                     packed_rows: int | None = None, fuse: bool = True) -> nn.Module:
    """Make `model` (in place) fast for float32 and bf16 inference on this CPU; returns `model`.

    - With `native` (the default), every BertModel inside gets the compiled encoder kernels as
      `cpu_encoder` for inputs of up to `max_tokens` real tokens (compiled now, once per machine):
      their own GEMMs on every x86 vendor, padding skipped, bf16 GEMMs under bf16 autocast where the
      CPU has AVX512_BF16. Where they cannot be built or do not take the model's shapes, it gets none
      and the layer-by-layer path runs; `native=False` removes one.
    - Every nn.Linear becomes a PackedLinear (the same Parameters; the state dict is unchanged) for
      the layer-by-layer path (larger inputs, masks with gaps, shapes the kernels do not take):
      oneDNN's GEMM with the bias, GELU or residual add inside if `fuse` (`fuse=False` keeps plain
      addmm, for comparisons), and MKL's packed GEMM for inputs of up to `packed_rows` rows, by
      default PACKED_ROWS on Intel CPUs, where it was measured faster, and 0 elsewhere
      (`dispatch.mkl_gemm_preferred`).

    Training, saving, GPU and int8 layers keep the model's own path; `dispatch.kernel` has the
    conditions. `bertkit serve`, `embed` and `predict` call this with the defaults on the CPU."""
    pack_linear_weights(model, (PACKED_ROWS if mkl_gemm_preferred() else 0) if packed_rows is None else packed_rows, fuse)
    for m in model.modules():
        if hasattr(m, "cpu_encoder"):  # a BertModel: bertkit.cpu does not import bertkit.model
            m.cpu_encoder = None
            if native:
                attach_native_encoder(m, max_tokens)
    return model


def for_inference(model: nn.Module, device: torch.device, precision: str = "fp32", quantize: str | None = None) -> nn.Module:
    """`model` as `bertkit serve`, `embed` and `predict` run it on `device` in `precision`: an int8
    copy with `quantize="int8"` (CPU, fp32 only), this CPU's fast path (`optimize_for_cpu`, in place),
    or the model moved to a GPU."""
    if quantize is not None:
        if device.type != "cpu" or precision != "fp32":
            raise BertkitError(f"--quantize {quantize} runs bertkit's int8 CPU kernels: use it on the CPU in fp32, "
                               f"not on {device} in {precision}")
        from .int8 import quantize_int8

        return optimize_for_cpu(quantize_int8(model.cpu()))
    if device.type == "cpu":
        return optimize_for_cpu(model.cpu())
    return model.to(device)


def inference_path(config, precision: str = "fp32", quantize: str | None = None, build: bool = True) -> str:
    """One line: the CPU inference path a model of `config` takes in `precision` (or with `--quantize`)
    after `optimize_for_cpu` on this CPU, and why. With `build=False` the kernels are not compiled to
    find out (`bertkit info`)."""
    cpu = f"{cpu_vendor() or 'unknown vendor'}, {'AVX-512' if 'avx512f' in cpu_flags() else 'no AVX-512'}"
    if quantize == "int8":
        name, gemm, flag = "int8", "AVX512_VNNI int8 GEMMs (bertkit/cpu/int8.py's recipe: int8 weights per channel, int8 activations per token)", "avx512_vnni"
        layer_path = "layer-by-layer path with Int8Linear (oneDNN's int8 GEMM)"
    elif precision == "bf16":
        name, gemm, flag = "bf16", "AVX512_BF16 GEMMs (bf16 products, float32 sums)", "avx512_bf16"
        layer_path = "autocast's bf16 layer-by-layer path"
    else:
        name, gemm, flag = precision, "its own float32 GEMMs", None  # any x86 build
        layer_path = f"layer-by-layer path ({'MKL packed GEMM up to 256 rows, ' if mkl_gemm_preferred() else ''}oneDNN GEMMs)"
    if not kernels_apply(config):
        return f"{name}: {layer_path}: the compiled encoder takes head sizes of multiples of 16 up to 128 ({cpu})"
    built, why = kernels_state(build)
    if built is False:
        return f"{name}: {layer_path}: compiled encoder unavailable ({why}) ({cpu})"
    if name != "fp32" and not _kernels_have(name, flag, built):
        return (f"{name}: {layer_path}: the compiled encoder's {name} GEMMs need {flag.upper()} and an AVX-512 "
                f"build ({cpu}; PyTorch's CPU capability {torch.backends.cpu.get_cpu_capability()})")
    note = "" if built else "; compiled on first use, once"
    return (f"{name}: compiled encoder (bertkit/cpu/native) with {gemm}, padding skipped, up to {MAX_TOKENS} real "
            f"tokens per call; {layer_path} above: measured fastest on AMD EPYC Zen 4 at batch 1 and 32 "
            f"(docs/benchmarks.md){note} ({cpu})")


def _kernels_have(name: str, flag: str, built: bool | None) -> bool:
    """Whether the compiled encoder runs `name` ("bf16", "int8") GEMMs here: the built kernels' own
    answer, or before they are built, the CPU's flag and an AVX-512 build (the kernels for these
    instructions are compiled into AVX-512 builds only)."""
    if built:
        kernels = load_kernels()
        return bool(kernels.bf16_supported() if name == "bf16" else kernels.int8_supported())
    return flag in cpu_flags() and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
