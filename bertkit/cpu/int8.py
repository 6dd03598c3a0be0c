"""int8 CPU inference: `quantize_int8(model)`, the one recipe bertkit uses for PyTorch int8.

    from bertkit.cpu.int8 import quantize_int8
    model = quantize_int8(model)    # a copy; the encoder's Linear layers int8, the rest float32

The recipe (CTranslate2's int8): in every transformer block, the Linear layers (Q/K/V, attention output,
feed-forward in and out) become `Int8Linear`: weights int8, symmetric, one scale per output channel,
fixed ahead of time; activations int8, symmetric, one scale per token (row), taken from the row's
max |x| at run time (dynamic); an int8 x int8 -> int32 GEMM (`torch._int_mm`: oneDNN's s8s8s32
GEMM, VNNI where the CPU has it), then float32 out: * token scale * channel scale + the float32 bias. Everything else stays
float32: embeddings, LayerNorms, the pooler and the task heads (they run on one row per sentence, or
have a handful of outputs: there is no time to win there).

Why per-token activations: BERT's activations have outlier tokens and channels (MiniLM-L6, fp32, at
the Linear inputs: max |x| is ~25x the median at Q/K/V, ~85x at the feed-forward input, ~60-200x at
the feed-forward output's, and a batch's max |x| is 3-8x its typical token's). PyTorch's
`quantize_dynamic` quantizes each activation with ONE scale for the whole batch, so the outlier
tokens set the step for every other token (and a sentence's vector depends on its batch-mates); it
also hard-codes 7-bit activations (reduce_range, against the int16 saturation of pre-VNNI x86
kernels). Measured with mean-pooled all-minilm-l6-v2 sentence vectors against fp32 on 1872 real
sentences (872 SST-2 dev + 1000 AG News test), cosine mean / worst:

    quantize_dynamic, every Linear, per-tensor weights (bertkit before)      0.9377 / 0.709
    quantize_dynamic, per-channel weights                                    0.9756 / 0.892
    quantize_dynamic, per-channel, FFN output Linear fp32                    0.9878 / 0.936
    quantize_dynamic, per-channel, 8-bit activations (reduce_range off)      0.9931 / 0.970
    quantize_dynamic, per-channel, 8-bit, FFN output Linear fp32 (6 of 24)   0.9964 / 0.980
    this recipe: per-token, per-channel, every block Linear int8             0.9971 / 0.983
    per-token, FFN output Linear fp32 (6 of 24)                              0.9978 / 0.987

`nice -n 19 .venv/bin/python scripts/int8_fidelity.py` prints the full table (first / last layer,
attention output, pooler, ONNX Runtime). The recipe reaches the target (mean >= 0.995, worst >=
0.98) with no Linear left in fp32, and its result does not depend on the batch.

Speed: `Int8Linear` below is the layer-by-layer form (oneDNN's int8 GEMM through `torch._int_mm`,
with the row quantization and the output scaling as separate kernels). What `--quantize int8` runs
is the compiled encoder's int8 GEMM on these same int8 weights (cpu/native/encoder.cpp: VNNI,
the quantization in one pass, the scaling, bias and GELU as the output is stored), where the CPU has
AVX512_VNNI: 2.6x the layer form for one sentence and 1.2x for batches of 32 (AMD EPYC Zen 4,
2 threads; benchmarks/native_paths.py, docs/benchmarks.md).

Modules are found by name (bertkit.cpu does not import bertkit.model): an nn.Linear named
`...layers.<i>.<qkv|query|key|value|attn_out|ffn_in|ffn_out>` (bertkit's model and its export graph).
"""

from __future__ import annotations

import copy
import re
from typing import Collection

import torch
import torch.nn as nn

# the Linear layers of a transformer block, in bertkit's model (qkv) and its export graph (query, key, value)
BLOCK_LINEARS = ("qkv", "query", "key", "value", "attn_out", "ffn_in", "ffn_out")
_BLOCK_LINEAR = re.compile(r"(?:^|\.)layers\.\d+\.(" + "|".join(BLOCK_LINEARS) + r")$")


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel and x quantized to int8 per row at run time.

    Any input shape (..., in_features), float32. Buffers: `weight_int8` (in_features, out_features),
    the transposed int8 weight (W ~= weight_int8^T * weight_scale[:, None]); `weight_scale`
    (out_features,); `output_scale` = weight_scale / 127, the row's step (max |x| / 127) factored
    out; `bias` (out_features,) float32 or None."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = w.abs().amax(1).clamp_min(1e-12) / 127.0
        weight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", weight.t().contiguous())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("output_scale", scale / 127.0)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as few kernels as it takes: at a few rows their launches cost as much as the GEMM
        rows = x.reshape(-1, self.in_features)
        row_max = rows.abs().amax(1, keepdim=True).clamp_min_(1e-12)
        q = torch.mul(rows, 127.0 / row_max).round_().to(torch.int8)  # |q| <= 127
        out = torch._int_mm(q, self.weight_int8).float().mul_(row_max)  # exact int32 sums, then the row's step * 127
        out = out.mul_(self.output_scale) if self.bias is None else torch.addcmul(self.bias, out, self.output_scale)
        return out.reshape(x.shape[:-1] + (self.out_features,))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                "weights int8 per channel, activations int8 per token")


def is_block_linear(name: str, module: nn.Module) -> bool:
    """Whether the recipe quantizes the module at qualified name `name`: a transformer block's nn.Linear."""
    return isinstance(module, nn.Linear) and _BLOCK_LINEAR.search(name) is not None


def quantize_int8(model: nn.Module, keep_fp32: Collection[str] = ()) -> nn.Module:
    """A copy of `model` (a bertkit model, or its export graph) with every transformer-block
    nn.Linear replaced by an `Int8Linear` (per-channel int8 weights, per-token int8 activations) and
    everything else float32, in eval mode. `keep_fp32`: block Linear names (the last name part, e.g.
    "ffn_out", or a qualified name) to leave in float32 as well; the recipe keeps none.

    Fidelity (all-minilm-l6-v2, cosine of mean-pooled sentence vectors to fp32 over 872 SST-2 dev +
    1000 AG News test sentences): mean 0.9971, worst 0.983. Measure it again with
    `nice -n 19 .venv/bin/python scripts/int8_fidelity.py --parts pertoken`; the module docstring
    compares the alternatives."""
    model = copy.deepcopy(model).eval()
    targets = [name for name, m in model.named_modules()
               if is_block_linear(name, m) and name not in keep_fp32 and name.rsplit(".", 1)[-1] not in keep_fp32]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Int8Linear(getattr(parent, child)))
    return model
