"""Token and sentence embeddings from a BERT encoder.

    emb = BertEmbedding("all-minilm-l6-v2")
    tokens, vectors = emb(["some sentence"])[0]          # one vector per WordPiece, [CLS]/[SEP] included
    words, offsets, vectors = emb.word_vectors(["some sentence"], "avg")[0]   # one vector per word
    matrix = emb.sentence_vectors(["a", "b"])      # (2, H), the checkpoint's own recipe (SentenceRecipe)

Inputs are encoded in batches of similar length (sorted, then put back in the caller's order), so a
file of mixed-length lines wastes little work on padding.

Where it runs: a model given by name is loaded, moved to `device` (default: a GPU when torch
sees one, else the CPU) and made ready for inference there as `bertkit embed` and `serve` run it
(`bertkit.cpu.optimize.for_inference`: on the CPU the compiled encoder where it applies); a model
object you pass stays as it is, on its device unless you give `device`. `quantize="int8"` (CPU, fp32)
runs an int8 copy of either. The batches always go to the model's current device, so
`emb.model.to("cuda")` later works too. `precision="bf16"` (CUDA, or a CPU with AVX512_BF16/AMX) or
"fp16" (CUDA) runs the encoder under autocast (bertkit/device.py); the vectors returned are float32
either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..cpu.optimize import for_inference
from ..device import autocast, model_device, resolve_device, resolve_precision
from ..errors import BertkitError

POOLINGS = ("none", "cls", "mean", "auto")
WORD_COMBINES = ("avg", "sum", "last")  # how word_vectors makes a word's vector from its pieces'


@dataclass(frozen=True)
class SentenceRecipe:
    """How a checkpoint turns token vectors into one sentence vector.

    A sentence-transformers checkpoint says so itself: `modules.json` lists a Pooling module (its
    `1_Pooling/config.json` names the mode) and maybe a Normalize module (L2), and
    `sentence_bert_config.json` its `max_seq_length`. Without those files: mean pooling, no
    normalisation. `bertkit embed --pooling auto`, `BertEmbedding.sentence_vectors` and
    `bertkit serve` all use this one rule."""

    pooling: str = "mean"  # "mean", "cls" or "max"
    normalize: bool = False
    max_seq_length: int | None = None
    source: str = "default (mean pooling)"

    @classmethod
    def from_dir(cls, directory) -> "SentenceRecipe":
        from pathlib import Path

        from ..textio import read_json

        directory = Path(directory)
        modules_file = directory / "modules.json"
        if not modules_file.is_file():
            return cls()
        modules = read_json(modules_file)
        if not isinstance(modules, list):
            raise BertkitError(f"{modules_file}: expected a list of modules")
        kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
        pooling = "mean"
        if "Pooling" in kinds:
            config_file = directory / str(kinds["Pooling"].get("path", "")) / "config.json"
            config = read_json(config_file) if config_file.is_file() else {}
            modes = [m for m in ("cls_token", "mean_tokens", "max_tokens") if config.get(f"pooling_mode_{m}")]
            unsupported = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k[13:] not in
                           ("cls_token", "mean_tokens", "max_tokens")]
            if len(modes) != 1 or unsupported:
                raise BertkitError(f"{config_file}: bertkit supports exactly one of pooling_mode_cls_token, "
                                   f"_mean_tokens, _max_tokens; found {modes + unsupported}")
            pooling = modes[0].split("_")[0]
        st_config = directory / "sentence_bert_config.json"
        max_seq_length = read_json(st_config).get("max_seq_length") if st_config.is_file() else None
        return cls(pooling, "Normalize" in kinds, max_seq_length, str(modules_file))

    def apply(self, seq: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(B, T, H) last hidden states and (B,) real-token counts -> (B, H) float32 sentence vectors."""
        seq = np.asarray(seq, dtype=np.float32)
        mask = np.arange(seq.shape[1])[None, :] < np.asarray(lengths)[:, None]
        if self.pooling == "cls":
            out = seq[:, 0]
        elif self.pooling == "max":
            out = np.where(mask[:, :, None], seq, -np.inf).max(axis=1)
        else:
            out = (seq * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


class BertEmbedding:
    def __init__(self, model="all-minilm-l6-v2", max_len: int = 512, batch_size: int = 32, device: str | None = None,
                 precision: str = "fp32", quantize: str | None = None):
        from ..pretrained import load

        by_name = isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")
        self.model = load(model, head="encoder") if by_name else model
        if getattr(self.model, "tokenizer", None) is None:
            raise BertkitError("model has no tokenizer (its checkpoint directory lacks vocab.txt)")
        self.tokenizer = self.model.tokenizer
        self.max_len = min(max_len, self.model.config.max_position_embeddings)
        self.batch_size = batch_size
        self.n_truncated = 0  # inputs cut to max_len so far, for callers that report it once
        directory = (getattr(self.model, "load_report", None) or {}).get("directory")
        self.recipe = SentenceRecipe.from_dir(directory) if directory else SentenceRecipe()
        if device is not None or by_name:
            self.model.to(resolve_device(device or "auto"))
        self.model.eval()
        self.precision = resolve_precision(precision, self.device)
        if by_name or quantize is not None:
            self.model = for_inference(self.model, self.device, self.precision, quantize)

    @property
    def device(self) -> torch.device:
        """Where the model is now (its batches go there)."""
        return model_device(self.model)

    def _batches(self, sentences: Sequence[str], max_len: int | None = None) -> Iterator[tuple[list[int], object, torch.Tensor]]:
        """Yield (original indices, the padded batch on the CPU, last hidden states (b, T, H) as
        float32 on the CPU) batch by batch."""
        encodings = self.tokenizer.encode_batch(list(sentences), max_len=max_len or self.max_len)
        self.n_truncated += sum(e.truncated for e in encodings)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
        device = self.device
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer.pad([encodings[i] for i in idx])
            on_device = batch.to(device)
            with torch.inference_mode(), autocast(device, self.precision):
                seq, _ = self.model(on_device.input_ids, on_device.segment_ids, on_device.valid_lengths)
            yield idx, batch, seq.float().cpu()

    def __call__(self, sentences: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        """For each sentence: (WordPiece tokens, vectors (len(tokens), H)) from the last layer."""
        out: list = [None] * len(sentences)
        for idx, batch, seq in self._batches(sentences):
            seq = seq.numpy()
            for row, i in enumerate(idx):
                n = int(batch.valid_lengths[row])
                out[i] = (batch.encodings[row].tokens, seq[row, :n].copy())
        return out

    def word_vectors(self, sentences: Sequence[str], combine: str = "avg") -> list[tuple[list[str], list[tuple[int, int]], np.ndarray]]:
        """For each sentence: (words, their (start, end) character offsets, vectors (len(words), H)).

        One vector per word, [CLS]/[SEP] left out: the average, sum or last of the word's pieces'
        last-layer vectors (GluonNLP's `oov_way`). A word is BERT's own: a piece and the `##`
        pieces after it (so punctuation is a word of its own); `sentence[start:end]` is the word.
        """
        from ..tagging.words import piece_groups

        if combine not in WORD_COMBINES:
            raise BertkitError(f"--words {combine!r}: one of {', '.join(WORD_COMBINES)}")
        hidden = self.model.config.hidden_size
        out: list = [None] * len(sentences)
        for idx, batch, seq in self._batches(sentences):
            seq = seq.numpy()
            for row, i in enumerate(idx):
                enc = batch.encodings[row]
                groups = piece_groups(enc.tokens)
                spans = [(enc.offsets[a][0], enc.offsets[b - 1][1]) for a, b in groups]
                pieces = [seq[row, a:b] for a, b in groups]
                vectors = [p.mean(0) if combine == "avg" else p.sum(0) if combine == "sum" else p[-1] for p in pieces]
                out[i] = ([sentences[i][a:b] for a, b in spans], spans,
                          np.stack(vectors) if vectors else np.zeros((0, hidden), dtype=np.float32))
        return out

    def sentence_vectors(self, sentences: Sequence[str], pooling: str = "auto") -> np.ndarray:
        """(N, H) float32, one vector per sentence. `auto`: the checkpoint's own recipe (`self.recipe`,
        e.g. mean pooling + L2 normalisation for all-minilm-l6-v2, and its max_seq_length), mean
        pooling when it ships none; `cls` / `mean`: that pooling, unnormalised."""
        if pooling not in ("cls", "mean", "auto"):
            raise BertkitError(f"--pooling {pooling!r}: sentence vectors need 'cls' or 'mean' (or 'auto': the checkpoint's recipe)")
        recipe = self.recipe if pooling == "auto" else SentenceRecipe(pooling)
        max_len = min(self.max_len, recipe.max_seq_length or self.max_len)
        out = np.zeros((len(sentences), self.model.config.hidden_size), dtype=np.float32)
        for idx, batch, seq in self._batches(sentences, max_len):
            out[idx] = recipe.apply(seq.numpy(), batch.valid_lengths.numpy())
        return out
