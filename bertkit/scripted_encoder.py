"""A flat copy of the encoder for small unpadded CPU inputs: one sentence at a time, fast.

For one short sentence (SST-2 dev: 25 tokens on average) BERT's matrix multiplies are small and the
rest of a forward pass is mostly Python: each of the ~100 PyTorch calls of a MiniLM forward costs a
few microseconds of interpreter and module overhead, and together they cost as much as a third of
the GEMMs. ONNX Runtime runs the same graph from C++. This module runs it from C++ too: the encoder
is rewritten as one flat TorchScript function over the model's own tensors, with as few operations
as the layer needs:
- MKL-packed weights for all four matrix multiplies of a layer (as `packed_linear.py`);
- the attention scale 1/sqrt(head_dim) folded into the query rows of the Q/K/V weight, once;
- attention as bmm, softmax, bmm, which at a few dozen tokens takes half the time of PyTorch's SDPA;
- GELU in place on the GEMM's output;
- no padding bookkeeping: the path is taken only when every row is full (no padding at all).

    from bertkit.scripted_encoder import use_scripted_encoder
    use_scripted_encoder(model)    # in place; `bertkit serve`'s PyTorch backend does this

The function runs as compiled kernels where they build (`native_encoder.py`: a C++ compiler on this
machine; faster still, as attention, LayerNorm and GELU become single vectorized passes) and as
TorchScript otherwise (`native=False` asks for TorchScript).

The model stays an ordinary model (training, saving, GPU and padded inputs are untouched). The
path is taken only under `torch.no_grad()` / `inference_mode()` in eval mode, for float32 CPU
inputs without padding of up to `max_tokens` tokens in all; above that the layer-by-layer path with
its fused oneDNN kernels is faster (`fused_linear.py`). The derived copies (packed weights, scaled
query rows) are rebuilt when any parameter changes (weight_versions.py). Outputs equal the
layer-by-layer path's up to float32 rounding (tests/test_scripted_encoder.py).
"""

from __future__ import annotations

import copy
import warnings
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fused_linear import cpu_autocast, graph_capture
from .native_encoder import NativeEncoder, kernels_apply, load_kernels
from .packed_linear import PACK_FOR_ROWS, PACKED_MAX_ROWS, mkl_packing_available
from .weight_versions import ParametersWatch

# config.hidden_act -> the activation's code in the script (TorchScript cannot hold a function)
_ACTIVATION_CODES = {"gelu": 0, "gelu_new": 1, "gelu_pytorch_tanh": 1, "relu": 2}


class _FlatEncoder(nn.Module):
    """The encoder and pooler as one function of (input_ids, segment_ids), both (B, T) without
    padding; returns (hidden states (B, T, H), pooled output (B, H), or (0, H) without a pooler).
    Holds the model's own tensors (shared, not copied) and the derived copies."""

    def __init__(self, bert):
        super().__init__()
        cfg = bert.config
        self.hidden, self.heads, self.head_dim = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
        self.eps, self.activation = cfg.layer_norm_eps, _ACTIVATION_CODES[cfg.hidden_act]
        emb = bert.embeddings
        self.word, self.segment = emb.word_embeddings.weight.detach(), emb.token_type_embeddings.weight.detach()
        self.position = emb.position_embeddings.weight.detach()
        self.emb_norm_w, self.emb_norm_b = emb.norm.weight.detach(), emb.norm.bias.detach()
        linears: List[Tuple[torch.Tensor, torch.Tensor]] = []
        norms: List[torch.Tensor] = []
        h, scale = self.hidden, self.head_dim ** -0.5
        for layer in bert.layers:
            qkv_w, qkv_b = layer.qkv.weight.detach().clone(), layer.qkv.bias.detach().clone()
            qkv_w[:h] *= scale  # q k^T / sqrt(d) == (q / sqrt(d)) k^T: the scale costs nothing here
            qkv_b[:h] *= scale
            linears += [(qkv_w, qkv_b)] + [(m.weight.detach(), m.bias.detach()) for m in (layer.attn_out, layer.ffn_in, layer.ffn_out)]
            for norm in (layer.attn_norm, layer.ffn_norm):
                norms += [norm.weight.detach(), norm.bias.detach()]
        self.has_pooler = bert.pooler is not None
        if self.has_pooler:
            linears.append((bert.pooler.weight.detach(), bert.pooler.bias.detach()))
        self.weights: List[torch.Tensor] = [w for w, _ in linears]
        self.biases: List[torch.Tensor] = [b for _, b in linears]
        self.packed: List[torch.Tensor] = [torch.ops.mkl._mkl_reorder_linear_weight(w, PACK_FOR_ROWS) for w in self.weights]
        self.norms, self.num_layers = norms, len(bert.layers)

    def linear(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return torch.ops.mkl._mkl_linear(x, self.packed[i], self.weights[i], self.biases[i], x.shape[0])

    def act(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == 0:
            return torch.ops.aten.gelu_(x)  # in place: x is the GEMM's fresh output
        if self.activation == 1:
            return torch.ops.aten.gelu_(x, approximate="tanh")
        return F.relu_(x)

    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor, cls_only: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """With `cls_only` the first output is the final [CLS] hidden states, (B, H): the last layer's
        per-token work after attention runs for those rows alone (BertModel.pooled_output)."""
        batch, seqlen = input_ids.shape[0], input_ids.shape[1]
        n, h = batch * seqlen, self.hidden
        x = F.embedding(input_ids, self.word) + F.embedding(segment_ids, self.segment) + self.position[:seqlen]
        x = F.layer_norm(x.view(n, h), [h], self.emb_norm_w, self.emb_norm_b, self.eps)
        for i in range(self.num_layers):
            qkv = self.linear(x, 4 * i).view(batch, seqlen, 3, self.heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * self.heads, seqlen, self.head_dim).unbind(0)
            probs = torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1)  # (B*heads, T, T); q is already scaled
            a = torch.bmm(probs, v).view(batch, self.heads, seqlen, self.head_dim).transpose(1, 2).reshape(n, h)
            if cls_only and i == self.num_layers - 1:
                a, x = a[::seqlen], x[::seqlen]  # the [CLS] rows
            x = F.layer_norm(self.linear(a, 4 * i + 1).add_(x), [h], self.norms[4 * i], self.norms[4 * i + 1], self.eps)
            f = self.act(self.linear(x, 4 * i + 2))
            x = F.layer_norm(self.linear(f, 4 * i + 3).add_(x), [h], self.norms[4 * i + 2], self.norms[4 * i + 3], self.eps)
        seq = x if cls_only else x.view(batch, seqlen, h)
        if not self.has_pooler:
            return seq, x.new_empty(0, h)
        return seq, torch.tanh(self.linear(seq if cls_only else seq[:, 0], 4 * self.num_layers))


class ScriptedEncoder:
    """Attached to a BertModel as `model.scripted_encoder`; `BertModel.forward` asks it first.

    A plain object, not a submodule: the model's state dict, `.to()` and parameters are unchanged.
    The script is built on the first call that can use it and rebuilt when a parameter changes."""

    def __init__(self, bert, max_tokens: int = PACKED_MAX_ROWS, native: bool = True):
        self.bert, self.max_tokens, self.native = bert, max_tokens, native
        self._script, self._built_from, self._watch = None, None, ParametersWatch(bert)

    def __call__(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None, cls_only=False):
        """BertModel.forward's (sequence output, pooled output) for an unpadded batch, or None where
        this path does not apply (then the caller runs the layer-by-layer path). With `cls_only`:
        (final [CLS] hidden states (B, H), pooled output), for BertModel.pooled_output."""
        bert = self.bert
        if (bert.training or torch.is_grad_enabled() or input_ids.device.type != "cpu" or input_ids.dim() != 2
                or input_ids.numel() > self.max_tokens or input_ids.shape[1] > bert.config.max_position_embeddings
                or graph_capture() or cpu_autocast()):
            return None
        if attention_mask is not None:
            if not bool(attention_mask.all()):
                return None
        elif valid_lengths is not None and int(torch.as_tensor(valid_lengths).min()) < input_ids.shape[1]:
            return None
        key = self._watch.key()
        if self._built_from != key:
            self._script = self._build() if _plain_float_layers(bert) else None
            self._built_from = key
        if self._script is None:
            return None
        seq, pooled = self._script(input_ids, torch.zeros_like(input_ids) if segment_ids is None else segment_ids, cls_only)
        return seq, (pooled if bert.pooler is not None else None)

    def _build(self):
        flat = _FlatEncoder(self.bert)
        kernels = load_kernels() if self.native and kernels_apply(self.bert.config) else None
        return NativeEncoder(flat, kernels) if kernels is not None else _script(flat)

    @property
    def runs_native(self) -> bool:
        """Whether the last built function is the compiled one (False: TorchScript, or not built yet)."""
        return isinstance(self._script, NativeEncoder)

    def __deepcopy__(self, memo):
        # a deep-copied model gets its own (lazily built) script over its own tensors
        return ScriptedEncoder(copy.deepcopy(self.bert, memo), self.max_tokens, self.native)


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    # TorchScript is deprecated in favour of torch.compile / torch.export, but it is what runs a
    # dynamic-shape graph from C++ with no compile step: torch.compile was slower here (0.90x, one
    # recompile or graph break per new length; docs/benchmarks.md) and an exported program still runs
    # its ops from Python.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def _plain_float_layers(bert) -> bool:
    """float32 nn.Linear weights throughout (a quantized or half-precision model keeps its own path)."""
    linears = [m for layer in bert.layers for m in (layer.qkv, layer.attn_out, layer.ffn_in, layer.ffn_out)]
    return bert.embeddings.word_embeddings.weight.dtype == torch.float32 and all(
        isinstance(m, nn.Linear) and type(m.weight) is nn.Parameter and m.weight.dtype == torch.float32 and m.bias is not None
        for m in linears + ([bert.pooler] if bert.pooler is not None else []))


def use_scripted_encoder(model: nn.Module, max_tokens: int = PACKED_MAX_ROWS, native: bool = True) -> nn.Module:
    """Give every BertModel inside `model` (in place) a scripted encoder for unpadded CPU inputs of
    up to `max_tokens` tokens; returns `model`. Without MKL (no packed GEMM) the model is left as is.
    With `native` the compiled kernels run it where they build (compiled now, on first use on this
    machine), TorchScript otherwise."""
    from .model import BertModel

    if not mkl_packing_available():
        return model
    for m in model.modules():
        if isinstance(m, BertModel) and m.config.hidden_act in _ACTIVATION_CODES:
            m.scripted_encoder = ScriptedEncoder(m, max_tokens, native)
            if native and kernels_apply(m.config):
                load_kernels()
    return model
