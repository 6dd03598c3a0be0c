"""What `bertkit serve` runs: a checkpoint on bertkit's PyTorch model, or an export directory.

Every backend offers the same small interface to the server:
    head, labels, max_len, recipe, tokenizer (for request validation), describe()
    forward(encodings) -> list of per-input results (a sentence vector, a {"label", "score"}, ...)
    answer(question, context) (question-answering heads)
`forward` gets inputs the batcher grouped by length; it pads them once and runs one batch.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import BertkitError

BACKENDS = ("torch", "onnx")


def softmax_labels(logits: np.ndarray, labels: list | None) -> list[dict]:
    """{"label", "score"} per row: the most probable label and its probability (as `predict`), or,
    with one output, the regression value (label None)."""
    if logits.shape[1] == 1:
        return [{"label": None, "score": float(v)} for v in logits[:, 0]]
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    names = labels or [f"LABEL_{i}" for i in range(logits.shape[1])]
    return [{"label": names[int(i)], "score": float(p[i])} for p, i in zip(probs, probs.argmax(axis=1))]


class Backend:
    name = ""
    concurrent_forwards = False  # whether batches may run on several threads at once
    head: str
    labels: list | None
    max_len: int
    embedding_max_len: int

    def __init__(self, directory: Path, tokenizer, head: str, labels, max_len: int, recipe, info: dict):
        from ..tokenizer import BertTokenizer

        self.directory, self.head, self.labels, self.max_len, self.recipe, self.info = directory, head, labels, max_len, recipe, info
        self.pad, self.worker_tokenizer = tokenizer.pad, tokenizer  # used on the batcher's thread only
        # The request handlers tokenize on the event loop while the worker thread may tokenize for
        # /answer: each gets its own tokenizer (a tokenizer keeps its truncation setting).
        self.tokenizer = BertTokenizer.from_dir(directory) if (directory / "vocab.txt").is_file() or \
            (directory / "tokenizer.json").is_file() else tokenizer
        self.embedding_max_len = min(max_len, recipe.max_seq_length or max_len) if recipe else max_len

    def outputs(self, batch) -> list[np.ndarray]:
        raise NotImplementedError

    def forward(self, encodings: list, task: str) -> list:
        """Per-input results for `task` ("embed", "embed_raw", "predict") of one batch."""
        batch = self.pad(encodings)
        out = self.outputs(batch)
        if task in ("embed", "embed_raw"):
            lengths = batch.valid_lengths.numpy()
            recipe = self.recipe if task == "embed" else _without_normalize(self.recipe)
            return list(recipe.apply(out[0], lengths))
        return softmax_labels(out[0], self.labels)

    def answer(self, question: str, context: str) -> dict:
        raise BertkitError(f"/answer needs a question-answering model; this one's head is {self.head}")

    def close(self) -> None:
        """Remove what the backend made for itself (an ONNX export of a checkpoint made at start-up)."""
        scratch = getattr(self, "scratch_dir", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    def describe(self) -> dict:
        return {"backend": self.name, "head": self.head, "labels": self.labels, "max_input_length": self.max_len}


def _without_normalize(recipe):
    from dataclasses import replace

    return replace(recipe, normalize=False)


class TorchBackend(Backend):
    """A checkpoint on bertkit's own PyTorch model (unpadded forward)."""

    name = "torch"
    concurrent_forwards = True  # inference only: the model's tensors are read, never written

    def __init__(self, directory: Path, quantize: str | None = None):
        from ..checkpoint import head_of, load
        from ..embedding import SentenceRecipe

        model = load(directory)
        if model.tokenizer is None:
            raise BertkitError(f"{directory}: the checkpoint has no vocabulary (vocab.txt or tokenizer.json)")
        head = head_of(model)
        head = "encoder" if head == "pretraining" else head
        if model.load_report.get("missing") and head != "encoder":
            raise BertkitError(f"{directory}: the {head} head's weights are missing ({model.load_report['missing'][0]})")
        if quantize == "int8":
            from ..export.torch_format import quantize_int8

            model = quantize_int8(model)  # dynamic int8 Linear layers; the unpadded forward stays
        else:
            from ..packed_linear import pack_linear_weights
            from ..scripted_encoder import use_scripted_encoder

            # the small batches of light load: MKL-packed weights, and one sentence (or an unpadded
            # group) runs the encoder as one call into compiled kernels (TorchScript where they
            # cannot be built) instead of ~100 Python-level calls
            use_scripted_encoder(pack_linear_weights(model))
        self.quantize = quantize
        self.model = model
        self.hidden_size = model.config.hidden_size
        max_len = int(model.info.get("max_len") or min(512, model.config.max_position_embeddings))
        labels = model.labels if head in ("classification", "token_classification") else None
        super().__init__(directory, model.tokenizer, head, labels, max_len, SentenceRecipe.from_dir(directory), model.info)
        self.outputs(model.tokenizer(["warm up"]))  # builds the scripted encoder now, not on the first request

    def describe(self):
        return {**super().describe(), "quantization": self.quantize}

    def outputs(self, batch):
        from ..export.verify import torch_outputs

        return torch_outputs(self.model, self.head, batch)

    def answer(self, question, context):
        if self.head != "question_answering":
            return super().answer(question, context)
        from ..qa.answer import answer

        return answer(self.model, question, context)


class ExportBackend(Backend):
    """An export directory (`bertkit export`) on ONNX Runtime or PyTorch, as its manifest says."""

    def __init__(self, directory: Path, threads: int | None = None):
        from ..embedding import SentenceRecipe
        from ..export.runtime import ExportedModel
        from ..tokenizer import BertTokenizer

        self.exported = ExportedModel(directory, threads=threads)
        m = self.exported.manifest
        self.name = "onnx" if m["format"] == "onnx" else "torch"
        self.hidden_size = int(m["source"]["config"]["hidden_size"])
        s = m.get("sentence_embedding") or {}
        recipe = SentenceRecipe(s.get("pooling", "mean"), bool(s.get("normalize")), s.get("max_seq_length"),
                                str(directory / "manifest.json"))
        try:
            tokenizer = BertTokenizer.from_dir(directory)
        except BertkitError as e:
            raise BertkitError(f"{directory}: the export's tokenizer files cannot be read ({e})") from None
        info = m.get("checkpoint_info") or {}
        super().__init__(directory, tokenizer, m["head"], m.get("labels"), int(m["max_sequence_length"]), recipe, info)

    def outputs(self, batch):
        return self.exported.run(batch.input_ids.numpy(), batch.segment_ids.numpy(), batch.attention_mask.long().numpy())

    def answer(self, question, context):
        if self.head != "question_answering":
            return super().answer(question, context)
        from ..qa.answer import answer

        return answer(_LogitsModel(self), question, context)

    def describe(self):
        return {**super().describe(), "export": {k: self.exported.manifest.get(k) for k in ("format", "model_file", "quantization")}}


class _LogitsModel:
    """Just enough of a PyTorch QA model for `bertkit.qa.answer`: tokenizer, info, eval(), and a call
    that returns (start, end) logits, here from the exported model."""

    training = False

    def __init__(self, backend: ExportBackend):
        self.backend, self.tokenizer, self.info = backend, backend.worker_tokenizer, backend.info

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, ids, segs, lengths):
        import torch

        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        start, end = self.backend.exported.run(ids.numpy(), segs.numpy(), mask.numpy())
        return torch.from_numpy(start), torch.from_numpy(end)


def load_backend(model: str, backend: str | None = None, threads: int | None = None, quantize: str | None = None,
                 log=print) -> Backend:
    """The backend for `model`: an export directory runs as exported; a checkpoint runs on PyTorch,
    or with `backend="onnx"` is exported (and verified) to a temporary directory first."""
    from ..checkpoint import resolve
    from ..export.runtime import is_export_dir, read_manifest

    if backend not in (None, *BACKENDS):
        raise BertkitError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    path = Path(model).expanduser()
    if path.is_dir() and is_export_dir(path):
        if quantize:
            raise BertkitError(f"--quantize applies to a checkpoint; {path} is an export (export it with --quantize int8)")
        fmt = read_manifest(path)["format"]
        if backend is not None and backend != fmt:
            raise BertkitError(f"--model {path} is a {fmt} export; run it with --backend {fmt}, or give the checkpoint")
        return ExportBackend(path, threads=threads)
    if path.is_file():
        raise BertkitError(f"--model {path}: is a file; give a checkpoint directory or an export directory")
    directory = resolve(model)
    if backend == "onnx":
        from ..export import export

        out = Path(tempfile.mkdtemp(prefix="bertkit-serve-onnx-"))
        log(f"exporting {directory} to ONNX in {out} ...")
        try:
            export(directory, "onnx", out, quantize=quantize)
            backend = ExportBackend(out, threads=threads)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        backend.scratch_dir = out  # removed when the server stops
        return backend
    return TorchBackend(directory, quantize=quantize)
