"""Token and sentence embeddings from a BERT encoder.

    emb = BertEmbedding("all-minilm-l6-v2")
    tokens, vectors = emb(["some sentence"])[0]          # one vector per WordPiece, [CLS]/[SEP] included
    matrix = emb.sentence_vectors(["a", "b"], pooling="mean")   # (2, H)

Inputs are encoded in batches of similar length (sorted, then put back in the caller's order), so a
file of mixed-length lines wastes little work on padding.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import BertkitError

POOLINGS = ("none", "cls", "mean")


class BertEmbedding:
    def __init__(self, model="all-minilm-l6-v2", max_len: int = 512, batch_size: int = 32, device: str | None = None):
        from .checkpoint import load

        self.model = load(model, head="encoder") if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__") else model
        if getattr(self.model, "tokenizer", None) is None:
            raise BertkitError("model has no tokenizer (its checkpoint directory lacks vocab.txt)")
        self.tokenizer = self.model.tokenizer
        self.max_len = min(max_len, self.model.config.max_position_embeddings)
        self.batch_size = batch_size
        self.n_truncated = 0  # inputs cut to max_len so far, for callers that report it once
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()

    def _batches(self, sentences: Sequence[str]) -> Iterator[tuple[list[int], object, torch.Tensor]]:
        """Yield (original indices, encodings, last hidden states (b, T, H)) batch by batch."""
        encodings = self.tokenizer.encode_batch(list(sentences), max_len=self.max_len)
        self.n_truncated += sum(e.truncated for e in encodings)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer.pad([encodings[i] for i in idx]).to(self.device)
            with torch.inference_mode():
                seq, _ = self.model(batch.input_ids, batch.segment_ids, batch.valid_lengths)
            yield idx, batch, seq

    def __call__(self, sentences: Sequence[str]) -> list[tuple[list[str], np.ndarray]]:
        """For each sentence: (WordPiece tokens, vectors (len(tokens), H)) from the last layer."""
        out: list = [None] * len(sentences)
        for idx, batch, seq in self._batches(sentences):
            seq = seq.float().cpu().numpy()
            for row, i in enumerate(idx):
                n = int(batch.valid_lengths[row])
                out[i] = (batch.encodings[row].tokens, seq[row, :n].copy())
        return out

    def sentence_vectors(self, sentences: Sequence[str], pooling: str = "mean") -> np.ndarray:
        """(N, H): the [CLS] vector (`cls`) or the mean over real tokens (`mean`) of each sentence."""
        if pooling not in ("cls", "mean"):
            raise BertkitError(f"--pooling {pooling!r}: sentence vectors need 'cls' or 'mean'")
        out = np.zeros((len(sentences), self.model.config.hidden_size), dtype=np.float32)
        for idx, batch, seq in self._batches(sentences):
            if pooling == "cls":
                vec = seq[:, 0]
            else:
                mask = batch.attention_mask.to(seq.dtype)[:, :, None]
                vec = (seq * mask).sum(1) / mask.sum(1)
            out[idx] = vec.float().cpu().numpy()
        return out
