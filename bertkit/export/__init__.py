"""Deployment artifacts: a checkpoint exported to ONNX or a PyTorch-native file, verified.

    from bertkit.export import export, ExportedModel
    manifest = export("my-model/", "onnx", "my-model-onnx/")          # or "torch"; quantize="int8"
    outputs = ExportedModel("my-model-onnx/").run(input_ids, token_type_ids, attention_mask)

graph.py     the padded, export-friendly forward over the checkpoint's own weights
onnx_format  ONNX writing, ONNX Runtime's BERT fusions, int8
torch_format torch.export (fp32) and TorchScript (int8)
verify.py    the exported model beside PyTorch on real sentences; --eval-file scores
runtime.py   read a manifest and run the model file (ONNX Runtime or PyTorch)
exporter.py  the whole export: files, verification, manifest
"""

from .exporter import FORMATS, export
from .runtime import ExportedModel, is_export_dir, read_manifest

__all__ = ["FORMATS", "ExportedModel", "export", "is_export_dir", "read_manifest"]
