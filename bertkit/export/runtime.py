"""Run an export directory: its manifest, tokenizer and model file, on ONNX Runtime or PyTorch.

    model = ExportedModel("out/")                     # runtime from the manifest's format
    outputs = model.run(input_ids, token_type_ids, attention_mask)   # numpy in, numpy out

Used by `bertkit serve --model EXPORT_DIR` and by export's own verification. A file that is not
what the manifest says (corrupt, or another model's) is a BertkitError naming it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from ..errors import BertkitError
from ..textio import read_json
from .graph import INPUT_NAMES

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def is_export_dir(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise BertkitError(f"{path}: expected a JSON object")
    for field in ("format", "model_file", "head", "inputs", "outputs", "max_sequence_length"):
        if field not in manifest:
            raise BertkitError(f"{path}: field {field!r} is missing (not a bertkit export manifest?)")
    if manifest["format"] not in ("onnx", "torch"):
        raise BertkitError(f"{path}: field 'format' is {manifest['format']!r}, expected 'onnx' or 'torch'")
    if [i.get("name") for i in manifest["inputs"]] != list(INPUT_NAMES):
        raise BertkitError(f"{path}: field 'inputs' must name {', '.join(INPUT_NAMES)}")
    return manifest


class ExportedModel:
    def __init__(self, directory: str | Path, threads: int | None = None):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.head = self.manifest["head"]
        self.output_names = [o["name"] for o in self.manifest["outputs"]]
        self.path = self.directory / self.manifest["model_file"]
        if not self.path.is_file():
            raise BertkitError(f"{self.path}: model file named in {MANIFEST} is missing")
        if self.manifest["format"] == "onnx":
            self._run = self._onnx_session(threads)
        else:
            self._run = self._torch_program(threads)

    def _onnx_session(self, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise BertkitError(f"{self.path}: not a loadable ONNX model ({type(e).__name__}: {str(e).strip()[:200]})") from None
        inputs, outputs = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or outputs != self.output_names:
            raise BertkitError(f"{self.path}: the model's inputs {inputs} / outputs {outputs} are not the "
                               f"{list(INPUT_NAMES)} / {self.output_names} that {MANIFEST} names (another model's file?)")

        def run(feed):
            return session.run(self.output_names, feed)

        return run

    def _torch_program(self, threads):
        import torch

        if threads:
            torch.set_num_threads(threads)
        try:
            if self.path.suffix == ".pt2":
                # torch logs a traceback before it gives up on a bad file; the one-line error below says it
                logger = logging.getLogger("torch.export")
                level = logger.level
                logger.setLevel(logging.CRITICAL)
                try:
                    module = torch.export.load(str(self.path)).module()
                finally:
                    logger.setLevel(level)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still there in 2.13
                    module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or foreign file
            raise BertkitError(f"{self.path}: not a loadable PyTorch export ({type(e).__name__}: {str(e).strip()[:200]})") from None

        def run(feed):
            with torch.inference_mode():
                out = module(*(torch.from_numpy(feed[name]) for name in INPUT_NAMES))
            out = out if isinstance(out, (tuple, list)) else (out,)
            return [o.float().numpy() for o in out]

        return run

    def run(self, input_ids, token_type_ids, attention_mask) -> list[np.ndarray]:
        """(B, T) int arrays in; the manifest's outputs, in its order, as float32 arrays."""
        feed = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "token_type_ids": np.ascontiguousarray(token_type_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        outputs = self._run(feed)
        if len(outputs) != len(self.output_names):
            raise BertkitError(f"{self.path}: gave {len(outputs)} outputs, {MANIFEST} names {len(self.output_names)}")
        return list(outputs)
