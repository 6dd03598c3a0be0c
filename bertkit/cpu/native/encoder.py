"""Compiled CPU kernels for the scripted encoder's function: one short sentence faster than ONNX Runtime.

`native_encoder.cpp` runs the same computation as `scripted_encoder._FlatEncoder.forward` (MKL's
packed GEMMs over the same tensors) with its own vectorized attention, add + LayerNorm, GELU and
embedding sum. It is compiled on first use on the user's machine with PyTorch's C++ extension
builder (a C++ compiler and ninja; about 30 s, once), for the instruction set PyTorch itself uses
on this CPU, and cached under `$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`).

Where it cannot be built (no compiler) or does not apply (head size not a multiple of 16 up to
128), `scripted_encoder` runs the TorchScript function instead, with the same results up to
float32 rounding. `BERTKIT_NATIVE=0` turns the kernels off.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch

_SOURCE = Path(__file__).with_name("native_encoder.cpp")
_HEAD_STEP = 16  # the kernels take head sizes in multiples of 16 up to 128 (and widths in multiples of 16)
# torch.backends.cpu.get_cpu_capability() -> compiler flags for the same instruction set
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}
_lock = threading.Lock()
_loaded: Optional[Tuple[object, str]] = None  # (module or None, why not)


def kernels_apply(config) -> bool:
    """Whether the kernels handle this model's shapes (every activation of the script is handled)."""
    return (config.head_dim % _HEAD_STEP == 0 and config.head_dim <= 8 * _HEAD_STEP
            and config.intermediate_size % _HEAD_STEP == 0)


def load_kernels():
    """The compiled module, or None (with one warning saying why) where it cannot be built here."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _build()
            if _loaded[0] is None:
                warnings.warn(f"bertkit: native encoder kernels unavailable ({_loaded[1]}); using TorchScript", stacklevel=3)
        return _loaded[0]


def _build() -> Tuple[object, str]:
    if os.environ.get("BERTKIT_NATIVE", "1") == "0":
        return None, "BERTKIT_NATIVE=0"
    capability = torch.backends.cpu.get_cpu_capability()
    name = f"bertkit_encoder_{capability.lower()}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    build_dir = root / f"{name}_torch{torch.__version__.split('+')[0]}"
    try:
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / f"{name}.so").exists():
            print(f"bertkit: compiling the native encoder kernels for this CPU ({capability}), once...", file=sys.stderr, flush=True)
        module = cpp_extension.load(
            name, [str(_SOURCE)], build_directory=str(build_dir),
            extra_cflags=["-O3", "-fopenmp", *_ISA_FLAGS.get(capability, [])], extra_ldflags=["-fopenmp"], verbose=False)
        return module, ""
    except Exception as e:  # no compiler, no ninja, read-only cache, ...: the TorchScript path still works
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return None, next((line.strip() for line in lines if "error:" in line), lines[0])  # the compiler's own words


class NativeEncoder:
    """Calls the compiled `encode` over a `_FlatEncoder`'s tensors; same signature as the script."""

    def __init__(self, flat, kernels):
        self.flat, self.kernels = flat, kernels

    def __call__(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, cls_only: bool):
        f = self.flat
        return self.kernels.encode(
            input_ids.long().contiguous(), segment_ids.long().contiguous(), cls_only, f.word, f.segment, f.position,
            f.emb_norm_w, f.emb_norm_b, f.packed, f.weights, f.biases, f.norms, f.heads, f.head_dim, f.eps, f.activation,
            f.has_pooler)
