"""The encoder in compiled kernels, for CPU inference on batches of any shape: the default CPU path.

At one short sentence (SST-2 dev: 25 tokens on average) a PyTorch forward is ~100 small operations,
each a few microseconds of interpreter and dispatch, and PyTorch's GEMMs (MKL's, oneDNN's) are tuned
for larger inputs: on an AMD EPYC, over one forward's weights at 25 rows, they reached 72 and 127
GFLOP/s where a plain register-blocked kernel reaches 166 (benchmarks/native_gemm.py). The kernels
also run bf16 (AVX512_BF16) and int8 (AVX512_VNNI, bertkit/cpu/int8.py's recipe) matrix multiplies. On padded batches the layer path
pays for attention over padding and a mask. `encoder.cpp` runs the whole encoder and pooler as one
call from C++, over the model's own tensors and derived copies made once:
- every Linear's weight and bias packed into the kernels' panels (`pack_linear`), with the attention
  scale 1/sqrt(head_dim) folded into the query rows of the Q/K/V weight;
- its own GEMM (bias in, GELU / ReLU on the way out), attention per sentence over its real tokens,
  add + LayerNorm, and embedding sum: single passes over memory;
- padding skipped: the real tokens of every sentence are packed row after row, as the layer path's
  `padding.py` does, and the padded positions of the output are zero, as there.

It is compiled on first use on the user's machine with PyTorch's C++ extension builder (a C++
compiler and ninja; about 30 s, once), for the instruction set PyTorch itself uses on this CPU, and
cached under `$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`). `optimize_for_cpu`
attaches a `NativeEncoder` to each BertModel as `model.cpu_encoder`, and `BertModel.forward` asks it
first. Where the kernels cannot be built (no compiler), do not apply (head size not a multiple of 16
up to 128) or are turned off (`BERTKIT_NATIVE=0`), nothing is attached and the layer-by-layer path
runs. Which inputs it takes is `dispatch.kernel`'s "encoder" row: eval mode without gradients, float32
layers, real tokens first in every row (any padding after them), up to `max_tokens` real tokens per
call. The derived copies are rebuilt when any parameter changes (weight_cache.py). Outputs equal the
layer-by-layer path's up to float32 rounding (tests/test_native_encoder.py).
"""

from __future__ import annotations

import copy
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..dispatch import kernel
from ..int8 import Int8Linear
from ..ops import ACTIVATIONS
from ..weight_cache import ParametersWatch

# Real tokens per call above which the layer-by-layer path runs instead: on an AMD EPYC the kernels
# were 1.03x the layer path at 4,096 unpadded tokens and 0.89x at 8,192 (benchmarks/native_token_limit.py,
# docs/logs/native-token-limit-2026-12-05.txt). It also bounds the kernels' working memory.
MAX_TOKENS = 4096

_SOURCE = Path(__file__).with_name("encoder.cpp")
_HEAD_STEP = 16  # the kernels take head sizes in multiples of 16 up to 128 (and widths in multiples of 16)
# torch.backends.cpu.get_cpu_capability() -> compiler flags for the same instruction set
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}
_lock = threading.Lock()
_loaded: Optional[Tuple[object, str]] = None  # (module or None, why not)


def kernels_apply(config) -> bool:
    """Whether the kernels handle this model's shapes and activation."""
    return (config.head_dim % _HEAD_STEP == 0 and config.head_dim <= 8 * _HEAD_STEP
            and config.intermediate_size % _HEAD_STEP == 0 and config.hidden_act in ACTIVATIONS)


def load_kernels():
    """The compiled module, or None (with one warning saying why) where it cannot be built here."""
    global _loaded
    if _loaded is not None:
        return _loaded[0]
    with _lock:
        if _loaded is None:
            _loaded = _build()
            if _loaded[0] is None:
                warnings.warn(f"bertkit: native encoder kernels unavailable ({_loaded[1]}); "
                              "the layer-by-layer path runs", stacklevel=4)
        return _loaded[0]


def kernels_state(build: bool = True) -> Tuple[Optional[bool], str]:
    """(True, "") where the kernels are loaded, (False, why) where they cannot be; with `build=False`,
    (None, "") where they have not been compiled on this machine yet (nothing is compiled to find out)."""
    if _loaded is None and not build:
        if _turned_off():
            return False, "BERTKIT_NATIVE=0"
        name, build_dir = _build_place()
        if not (build_dir / f"{name}.so").exists():
            return None, ""
    module = load_kernels()
    return (True, "") if module is not None else (False, _loaded[1])


def _build_place() -> Tuple[str, Path]:
    """(module name, build directory) of the kernels for this CPU's instruction set and this PyTorch."""
    name = f"bertkit_encoder_{torch.backends.cpu.get_cpu_capability().lower()}"
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions")
    return name, root / f"{name}_torch{torch.__version__.split('+')[0]}"


def _turned_off() -> bool:
    return os.environ.get("BERTKIT_NATIVE", "1") == "0"


def _build() -> Tuple[object, str]:
    if _turned_off():
        return None, "BERTKIT_NATIVE=0"
    capability = torch.backends.cpu.get_cpu_capability()
    name, build_dir = _build_place()
    try:
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / f"{name}.so").exists():
            print(f"bertkit: compiling the native encoder kernels for this CPU ({capability}), once...", file=sys.stderr, flush=True)
        module = cpp_extension.load(
            name, [str(_SOURCE)], build_directory=str(build_dir),
            extra_cflags=["-O3", "-fopenmp", *_ISA_FLAGS.get(capability, [])], extra_ldflags=["-fopenmp"], verbose=False)
        return module, ""
    except Exception as e:  # no compiler, no ninja, read-only cache, ...: the layer-by-layer path still works
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return None, next((line.strip() for line in lines if "error:" in line), lines[0])  # the compiler's own words


class _EncoderWeights:
    """The model's encoder and pooler tensors (shared, not copied) as the kernels take them, and the
    derived copies: packed weights, and the Q/K/V weight with its query rows scaled. `kind` is what
    the block Linear layers are: "fp32" (nn.Linear) or "int8" (bertkit/cpu/int8.py's Int8Linear)."""

    def __init__(self, bert, kind: str):
        cfg = bert.config
        self.kind = kind
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.eps, self.activation = cfg.layer_norm_eps, ACTIVATIONS[cfg.hidden_act].native
        emb = bert.embeddings
        self.word, self.segment = emb.word_embeddings.weight.detach(), emb.token_type_embeddings.weight.detach()
        self.position = emb.position_embeddings.weight.detach()
        self.emb_norm_w, self.emb_norm_b = emb.norm.weight.detach(), emb.norm.bias.detach()
        linears: list = []
        norms: List[torch.Tensor] = []
        h, scale = cfg.hidden_size, self.head_dim ** -0.5
        for layer in bert.layers:
            # q k^T / sqrt(d) == (q / sqrt(d)) k^T: the scale folded into the query outputs costs nothing
            # (int8: the same int8 weights, their output scale and bias scaled)
            if kind == "int8":
                qkv = layer.qkv
                out_scale, bias = qkv.output_scale.clone(), qkv.bias.clone()
                out_scale[:h] *= scale
                bias[:h] *= scale
                linears.append((qkv.weight_int8, out_scale, bias))
                linears += [(m.weight_int8, m.output_scale, m.bias) for m in (layer.attn_out, layer.ffn_in, layer.ffn_out)]
            else:
                qkv_w, qkv_b = layer.qkv.weight.detach().clone(), layer.qkv.bias.detach().clone()
                qkv_w[:h] *= scale
                qkv_b[:h] *= scale
                linears += [(qkv_w, qkv_b)] + [(m.weight.detach(), m.bias.detach()) for m in (layer.attn_out, layer.ffn_in, layer.ffn_out)]
            for norm in (layer.attn_norm, layer.ffn_norm):
                norms += [norm.weight.detach(), norm.bias.detach()]
        self.has_pooler = bert.pooler is not None
        if self.has_pooler:
            linears.append((bert.pooler.weight.detach(), bert.pooler.bias.detach()))
        self.linears, self.norms = linears, norms
        # output widths: an int8 weight is held transposed, (in, out)
        self.widths = [p[0].shape[1] if len(p) == 3 else p[0].shape[0] for p in linears]
        self._packed: dict = {}  # precision -> each Linear's parts for the kernels: made on the first call in it

    def packed(self, precision: str) -> list:
        """Each Linear's parts for the kernels in `precision` ("fp32", "bf16", or "int8" for int8 layers;
        the pooler stays float32 there), made once."""
        if precision not in self._packed:
            kernels = load_kernels()

            def pack(parts):
                if len(parts) == 3:  # int8 weight, output scale, bias
                    return list(kernels.pack_linear_int8(*parts))
                return list(kernels.pack_linear_bf16(*parts)) if precision == "bf16" else [kernels.pack_linear(*parts)]

            self._packed[precision] = [pack(parts) for parts in self.linears]
        return self._packed[precision]

    def encode(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, lengths: List[int], cls_only: bool,
               precision: str = "fp32"):
        return load_kernels().encode(
            input_ids.long().contiguous(), segment_ids.long().contiguous(), lengths, cls_only, self.word,
            self.segment, self.position, self.emb_norm_w, self.emb_norm_b, self.packed(precision), self.widths,
            self.norms, self.heads, self.head_dim, self.eps, self.activation, self.has_pooler)


class NativeEncoder:
    """Attached to a BertModel as `model.cpu_encoder` (by `optimize_for_cpu`); `BertModel.forward`
    asks it first. A plain object, not a submodule: the model's state dict, `.to()` and parameters
    are unchanged. The derived weights are built on the first call that can use them and rebuilt
    when a parameter changes."""

    def __init__(self, bert, max_tokens: int = MAX_TOKENS):
        self.bert, self.max_tokens = bert, max_tokens
        self._weights, self._built_from, self._watch = None, None, ParametersWatch(bert)

    def __call__(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None, cls_only=False):
        """BertModel.forward's (sequence output, pooled output), or None where the kernels do not take
        the batch (then the caller runs the layer-by-layer path). With `cls_only`:
        (final [CLS] hidden states (B, H), pooled output), for BertModel.pooled_output: the last
        layer's per-token work after attention runs for those rows alone."""
        lengths = real_lengths(input_ids, valid_lengths, attention_mask)
        choice = kernel("encoder", input_ids, self, lengths=lengths)
        if choice == "eager":
            return None
        segment_ids = torch.zeros_like(input_ids) if segment_ids is None else segment_ids
        precision = {"native": "fp32", "native-bf16": "bf16", "native-int8": "int8"}[choice]
        seq, pooled = self._weights.encode(input_ids, segment_ids, lengths, cls_only, precision)
        return seq, (pooled if self.bert.pooler is not None else None)

    def current_weights(self) -> Optional[_EncoderWeights]:
        """The kernels' tensors for the model's parameters as they are now (rebuilt after any change),
        or None where its layers are neither plain float32 ones nor bertkit's int8 recipe (half
        precision, PyTorch's quantized modules)."""
        key = self._watch.key()
        if self._built_from != key:
            kind = _layer_kind(self.bert)
            self._weights = _EncoderWeights(self.bert, kind) if kind else None
            self._built_from = key
        return self._weights

    @property
    def bf16_supported(self) -> bool:
        """Whether the kernels run bf16 matrix multiplies here (the CPU has AVX512_BF16)."""
        return bool(load_kernels().bf16_supported())

    @property
    def int8_supported(self) -> bool:
        """Whether the kernels run int8 matrix multiplies here (the CPU has AVX512_VNNI)."""
        return bool(load_kernels().int8_supported())

    @property
    def ready(self) -> bool:
        """Whether the derived weights are built for the layers as they were at the last call that
        asked: that call ran the kernels."""
        return self._weights is not None

    def __deepcopy__(self, memo):
        # a deep-copied model gets its own (lazily built) weights over its own tensors
        return NativeEncoder(copy.deepcopy(self.bert, memo), self.max_tokens)


def real_lengths(input_ids: torch.Tensor, valid_lengths=None, attention_mask=None) -> Optional[List[int]]:
    """The number of real tokens of each row of `input_ids` (B, T), where every row has its real
    tokens first; None where a mask has a gap (a padded position before a real one)."""
    if input_ids.dim() != 2:
        return None
    batch, seqlen = input_ids.shape
    if attention_mask is not None:
        mask = attention_mask.to(torch.bool)
        counts = mask.sum(1)
        if not bool((mask == (torch.arange(seqlen, device=mask.device) < counts[:, None])).all()):
            return None
        return counts.tolist()
    if valid_lengths is not None:
        return torch.as_tensor(valid_lengths).clamp(max=seqlen).tolist()
    return [seqlen] * batch


def _layer_kind(bert) -> Optional[str]:
    """"fp32" where the encoder's Linear layers are float32 nn.Linear with a bias, "int8" where its block
    Linear layers are bertkit's Int8Linear (bertkit/cpu/int8.py) with a bias and the pooler float32,
    None otherwise (half precision, PyTorch's quantized modules: they keep their own path)."""
    def plain(m):
        return (isinstance(m, nn.Linear) and type(m.weight) is nn.Parameter and m.weight.dtype == torch.float32
                and m.bias is not None)

    blocks = [m for layer in bert.layers for m in (layer.qkv, layer.attn_out, layer.ffn_in, layer.ffn_out)]
    if bert.embeddings.word_embeddings.weight.dtype != torch.float32 or not (bert.pooler is None or plain(bert.pooler)):
        return None
    if all(plain(m) for m in blocks):
        return "fp32"
    if all(isinstance(m, Int8Linear) and m.bias is not None for m in blocks):
        return "int8"
    return None


def attach_native_encoder(bert, max_tokens: int = MAX_TOKENS) -> bool:
    """Give `bert` (a BertModel) a NativeEncoder where the kernels build (compiled now, on first use
    on this machine) and take its shapes; whether it got one."""
    if not kernels_apply(bert.config) or load_kernels() is None:
        return False
    bert.cpu_encoder = NativeEncoder(bert, max_tokens)
    return True
