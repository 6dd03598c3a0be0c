"""ONNX: write the export graph, fuse it for ONNX Runtime, quantize it to int8.

The graph is written by PyTorch's TorchScript-based exporter (`torch.onnx.export(dynamo=False)`).
Both exporters give the same numbers, but only this one leaves the op pattern that ONNX Runtime's
transformer optimizer fuses into its Attention kernel (measured on all-minilm-l6-v2: 6 of 6 layers
fused, against 0 of 6 from the dynamo exporter), and that kernel is most of ONNX Runtime's speed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import torch

from ..cpu.int8 import BLOCK_LINEARS  # the transformer blocks' Linear modules, named as in the export graph
from .graph import INPUT_NAMES, ExportGraph


def write_onnx(graph: ExportGraph, path: Path, sample: tuple[torch.Tensor, ...]) -> None:
    """Trace `graph` on `sample` and write it with dynamic batch and sequence dims."""
    dims = {0: "batch", 1: "sequence"}
    dynamic_axes = {name: dims for name in INPUT_NAMES}
    for name, shape in graph.output_spec():
        dynamic_axes[name] = {i: d for i, d in enumerate(shape) if d in ("batch", "sequence")}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's business
        torch.onnx.export(
            graph, sample, str(path), dynamo=False, opset_version=17,
            input_names=list(INPUT_NAMES), output_names=graph.output_names(), dynamic_axes=dynamic_axes,
        )


def optimize_for_onnxruntime(path: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Rewrite `path` in place with ONNX Runtime's BERT fusions (Attention, SkipLayerNormalization,
    BiasGelu, EmbedLayerNormalization); returns the fused-operator counts. The result uses ONNX
    Runtime's contrib ops, so it runs on ONNX Runtime only (`--no-optimize` keeps plain ONNX)."""
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        model = optimizer.optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
        model.save_model_to_file(str(path))
    return {k: v for k, v in model.get_fused_operator_statistics().items() if v}


# The int8 recipe for ONNX Runtime (scripts/int8_fidelity.py --parts onnx measures it; see quantize_int8).
INT8_OP_TYPES = ("MatMul", "Attention")  # the Linear layers; embedding tables (EmbedLayerNormalization, Gather) stay fp32
INT8_KEEP_FP32 = ("ffn_out",)  # of those, the ones whose MatMul stays fp32


def int8_nodes(path: Path, keep_fp32=INT8_KEEP_FP32) -> list[str]:
    """The nodes of the graph at `path` that the int8 recipe quantizes: the fused Attention nodes (Q, K
    and V) and the MatMuls of the transformer blocks' Linear layers not named in `keep_fp32`. The
    exporter names a Linear's MatMul after its module, /layers.<i>/<module name>/MatMul, fused graph
    or not. Everything else stays fp32: the pooler and task heads (whose Gemm ONNX Runtime's quantizer
    would otherwise turn into an int8 MatMul), the embeddings, and in an unfused graph attention's
    score and context products."""
    import onnx

    quantized = [k for k in BLOCK_LINEARS if k not in keep_fp32]
    pattern = re.compile(r"/layers\.\d+/(" + "|".join(quantized) + r")/MatMul$") if quantized else None
    graph = onnx.load(str(path), load_external_data=False).graph
    fused_qkv = not {"query", "key", "value"} & set(keep_fp32)
    return [n.name for n in graph.node if n.op_type == "Attention" and fused_qkv
            or n.op_type == "MatMul" and pattern is not None and pattern.search(n.name)]


def quantize_int8(source: Path, target: Path, per_channel: bool = True, keep_fp32=INT8_KEEP_FP32) -> None:
    """Dynamic int8 quantization (weights int8 ahead of time, activations quantized per batch).

    The recipe (`int8_nodes`): the transformer blocks' Linear layers, their MatMul and fused
    Attention nodes, get int8 weights with one scale per output channel (`per_channel`), except the
    MatMuls of the modules named in `keep_fp32`: the feed-forward output Linear, whose input (after
    GELU) has outliers ~200x its median. Embedding tables, the pooler and task heads stay fp32. ONNX Runtime quantizes each activation with ONE uint8 scale for the whole
    (padded) batch, so it cannot follow PyTorch int8's per-token recipe (bertkit/cpu/int8.py) and
    needs the fp32 layers. Cosine of mean-pooled all-minilm-l6-v2 vectors to fp32, mean / worst over
    872 SST-2 dev + 1000 AG News test sentences (batches of 32 sorted by length), measured with
    `nice -n 19 .venv/bin/python scripts/int8_fidelity.py --parts onnx`:

        per-tensor, every MatMul + embeddings (bertkit before)   0.9573 / 0.802
        per-channel                                              0.9928 / 0.970
        per-channel, ffn_out fp32, embeddings int8               0.9958 / 0.978
        per-channel, ffn_out fp32 (this recipe: 6 of 24 fp32)    0.9962 / 0.982
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = int8_nodes(source, keep_fp32)
    if not nodes:
        raise ValueError(f"{source}: no transformer-block MatMul or Attention node to quantize")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # ONNX shape inference cannot type the outputs of ONNX Runtime's fused contrib ops; they are fp32.
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=list(INT8_OP_TYPES), nodes_to_quantize=nodes,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
