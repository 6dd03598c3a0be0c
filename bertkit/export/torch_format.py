"""The PyTorch-native format: a `torch.export` program, or TorchScript for int8.

fp32 is saved with `torch.export.save` (`model.pt2`): a serialized ExportedProgram (graph + weights)
that `torch.export.load(path).module()` runs with PyTorch alone, no bertkit code, batch and sequence
dynamic. It needs no C++ compiler, unlike an AOTInductor package, whose compile step would make
export take minutes and tie the file to one machine's compiler and CPU.

int8 (`bertkit.cpu.int8.quantize_int8`: the transformer blocks' Linear layers with int8 weights per
output channel and int8 activations per token, the rest fp32) is saved as TorchScript
(`model.torchscript.pt`, `torch.jit.load`), which runs it with PyTorch alone (its int8 GEMM is
`torch._int_mm`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .graph import INPUT_NAMES, ExportGraph

FP32_FILE, INT8_FILE = "model.pt2", "model.torchscript.pt"


def write_exported_program(graph: ExportGraph, path: Path, sample: tuple[torch.Tensor, ...], max_len: int) -> None:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", min=1, max=max_len)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, sample, dynamic_shapes={n: {0: batch, 1: sequence} for n in INPUT_NAMES})
    torch.export.save(program, str(path))


def write_torchscript(module: torch.nn.Module, path: Path, sample: tuple[torch.Tensor, ...]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, sample, check_trace=False)
    traced.save(str(path))
