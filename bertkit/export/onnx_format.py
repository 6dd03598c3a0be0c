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
import warnings
from pathlib import Path

import torch

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


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization (weights int8 ahead of time, activations quantized per batch)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # ONNX shape inference cannot type the outputs of ONNX Runtime's fused contrib ops; they are fp32.
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
