"""What `bertkit serve` runs: a checkpoint on bertkit's PyTorch model, or an export directory.

Every backend offers the same small interface to the server:
    head, labels, max_len, recipe, tokenizer (for request validation), describe()
    forward(encodings) -> list of per-input results (a sentence vector, a {"label", "score"}, ...)
    answer(question, context) (question-answering heads)
`forward` gets inputs the batcher grouped by length; it pads them once and runs one batch.

Where and how the model runs (`placement`): a checkpoint on PyTorch goes to `--device` (the CPU, or
one GPU) and runs its forward passes in `--precision` under autocast. Autocast is thread-local, so
it is entered inside `outputs()` / `answer()`, on the batcher's worker thread that runs the model,
never on the request handler's. An export (ONNX Runtime or a torch.export file), ONNX made at
start-up, and int8 run on the CPU in their own precision: `auto` means the CPU for them, and an
explicit GPU or bf16/fp16 is refused.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_device, resolve_precision
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


def runs_on_cpu_only(model: str, backend: str | None = None, quantize: str | None = None) -> str | None:
    """Why `model` with these flags can run only on the CPU in fp32 (a phrase), or None when it runs
    on bertkit's PyTorch model, which goes wherever --device says."""
    from ..export.runtime import is_export_dir

    path = Path(model).expanduser()
    if path.is_dir() and is_export_dir(path):
        return f"{path} is an export, which runs on the CPU in its own precision"
    if backend == "onnx":
        return "--backend onnx runs on ONNX Runtime's CPU provider, in fp32"
    if quantize:
        return f"--quantize {quantize} runs PyTorch's int8 CPU kernels"
    return None


def placement(model: str, backend: str | None = None, quantize: str | None = None, device: str = "auto",
              precision: str = "fp32") -> tuple[torch.device, str]:
    """(device, precision) for `bertkit serve`, checked before anything is loaded: a device or
    precision this machine or this backend cannot run is a one-line BertkitError naming the flag."""
    where = resolve_device(device)
    key = resolve_precision(precision, where)
    cpu_only = runs_on_cpu_only(model, backend, quantize)
    if cpu_only is None:
        return where, key
    if where.type != "cpu" and str(device).strip().lower() != "auto":
        raise BertkitError(f"--device {device}: {cpu_only}; give a checkpoint with --backend torch (no --quantize) "
                           "to serve on a GPU, or --device cpu")
    if key != "fp32":
        raise BertkitError(f"--precision {precision}: {cpu_only}; --precision applies to a checkpoint on "
                           "--backend torch without --quantize")
    return torch.device("cpu"), "fp32"


class Backend:
    name = ""
    concurrent_forwards = False  # whether batches may run on several threads at once
    device = torch.device("cpu")  # where the model runs
    precision = "fp32"  # the forward passes' autocast precision
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

    def fill_mask(self, texts: list[str], top_k: int) -> list:
        raise BertkitError("/fill-mask needs a PyTorch checkpoint with the masked-LM head (a pretraining checkpoint)")

    def close(self) -> None:
        """Remove what the backend made for itself (an ONNX export of a checkpoint made at start-up)."""
        scratch = getattr(self, "scratch_dir", None)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "precision": self.precision, "head": self.head,
                "labels": self.labels, "max_input_length": self.max_len}


def _without_normalize(recipe):
    from dataclasses import replace

    return replace(recipe, normalize=False)


class TorchBackend(Backend):
    """A checkpoint on bertkit's own PyTorch model (unpadded forward)."""

    name = "torch"
    concurrent_forwards = True  # inference only: the model's tensors are read, never written

    def __init__(self, directory: Path, quantize: str | None = None, device: str | torch.device = "cpu",
                 precision: str = "fp32"):
        from ..checkpoint import head_of
        from ..pretrained import load
        from ..inference.embedding import SentenceRecipe

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.concurrent_forwards = self.device.type == "cpu"  # one GPU: one batch at a time
        model = load(directory)
        if model.tokenizer is None:
            raise BertkitError(f"{directory}: the checkpoint has no vocabulary (vocab.txt or tokenizer.json)")
        head = head_of(model)
        head = "encoder" if head == "pretraining" else head
        if model.load_report.get("missing") and head != "encoder":
            raise BertkitError(f"{directory}: the {head} head's weights are missing ({model.load_report['missing'][0]})")
        from ..cpu.optimize import for_inference, inference_path

        model = for_inference(model, self.device, self.precision, quantize)
        # the startup log's line: which CPU path runs and why (None on a GPU)
        self.path = inference_path(model.config, self.precision, quantize) if self.device.type == "cpu" else None
        self.quantize = quantize
        self.model = model
        self.hidden_size = model.config.hidden_size
        max_len = int(model.info.get("max_len") or min(512, model.config.max_position_embeddings))
        labels = model.labels if head in ("classification", "token_classification") else None
        super().__init__(directory, model.tokenizer, head, labels, max_len, SentenceRecipe.from_dir(directory), model.info)
        self.outputs(model.tokenizer(["warm up"]))  # builds the native encoder's weights now, not on the first request

    def describe(self):
        return {**super().describe(), "quantization": self.quantize}

    def outputs(self, batch):
        from ..export.verify import torch_outputs

        # runs on the batcher's worker thread: the batch goes to the model's device, and autocast
        # (thread-local) is entered here, on the thread that runs the model; float32 CPU arrays out
        return torch_outputs(self.model, self.head, batch, self.precision)

    def answer(self, question, context):
        if self.head != "question_answering":
            return super().answer(question, context)
        from ..inference.answer import answer

        return answer(self.model, question, context, precision=self.precision)

    def fill_mask(self, texts, top_k):
        """Per text, per [MASK]: [{token, score}] (the body `bertkit fill-mask` prints per line)."""
        from ..inference.fill_mask import as_records, fill_mask
        from ..model import BertForPreTraining

        if not isinstance(self.model, BertForPreTraining):
            return super().fill_mask(texts, top_k)
        return [as_records(masks) for masks in fill_mask(self.model, texts, top_k=top_k, precision=self.precision)]


class ExportBackend(Backend):
    """An export directory (`bertkit export`) on ONNX Runtime or PyTorch, as its manifest says."""

    def __init__(self, directory: Path, threads: int | None = None):
        from ..inference.embedding import SentenceRecipe
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
        from ..inference.answer import answer

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

    def parameters(self):  # no PyTorch parameters: `model_device` reads the CPU, where the batches stay
        return iter(())

    def train(self, mode=True):
        return self

    def __call__(self, ids, segs, lengths):
        import torch

        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
        start, end = self.backend.exported.run(ids.numpy(), segs.numpy(), mask.numpy())
        return torch.from_numpy(start), torch.from_numpy(end)


def load_backend(model: str, backend: str | None = None, threads: int | None = None, quantize: str | None = None,
                 log=print, device: str | torch.device = "cpu", precision: str = "fp32") -> Backend:
    """The backend for `model`: an export directory runs as exported; a checkpoint runs on PyTorch
    (on `device`, in `precision`: see `placement`), or with `backend="onnx"` is exported (and
    verified) to a temporary directory first."""
    from ..pretrained import resolve
    from ..export.runtime import is_export_dir, read_manifest

    if backend not in (None, *BACKENDS):
        raise BertkitError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    device, precision = placement(model, backend, quantize, device, precision)
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
    backend = TorchBackend(directory, quantize=quantize, device=device, precision=precision)
    if backend.path:
        log(f"inference path: {backend.path}")
    return backend
