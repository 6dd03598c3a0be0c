"""Predictions of a fine-tuned sequence classification / regression checkpoint.

    model = bertkit.load("out/sst2")
    bertkit.predict(model, ["this movie is so great"])   # [{"label": "1", "score": 0.98}]

For classification `label` is the most probable label and `score` its softmax probability; for
regression (one output) `label` is None and `score` the predicted value.

The batches go to the model's own device (`model.to("cuda")` first to predict on a GPU), and
`precision="bf16"` (or "fp16" on CUDA) runs the forward passes under autocast (bertkit/device.py);
scores are computed from float32 logits either way.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

from ..device import autocast, evaluating, model_device, resolve_precision
from ..errors import BertkitError
from ..tokenizer import TruncationWarning


def _max_len(model) -> int:
    directory = (getattr(model, "load_report", None) or {}).get("directory")
    if directory:
        from ..checkpoint import read_bertkit_info
        from pathlib import Path

        info = read_bertkit_info(Path(directory))
        if info.get("max_len"):
            return int(info["max_len"])
    return min(512, model.config.max_position_embeddings)


def predict(model, texts: str | Sequence[str], texts_b: str | Sequence[str] | None = None,
            max_len: int | None = None, batch_size: int = 64, precision: str = "fp32") -> list[dict]:
    """[{"label", "score"}] for each text (or text pair), in input order. `precision`: "fp32",
    "bf16" or "fp16" (autocast on the model's device; see bertkit/device.py for where each runs)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise BertkitError("this model has no tokenizer (load it with bertkit.load from a checkpoint with vocab.txt)")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts_b, str):
        texts_b = [texts_b]
    texts = list(texts)
    if texts_b is not None:
        texts_b = list(texts_b)
        if len(texts_b) != len(texts):
            raise BertkitError(f"got {len(texts)} first texts but {len(texts_b)} second texts")
    for i, t in enumerate(texts + (texts_b or [])):
        if not isinstance(t, str):
            raise BertkitError(f"input {i % max(1, len(texts))}: expected a string, got {type(t).__name__}")
        if not t.strip():
            raise BertkitError(f"input {i % max(1, len(texts)) + 1}: empty text")
    device = model_device(model)
    precision = resolve_precision(precision, device)
    max_len = max_len or _max_len(model)
    regression = model.num_labels == 1
    labels = getattr(model, "labels", None) or [f"LABEL_{i}" for i in range(model.num_labels)]
    with evaluating(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            encodings = tok.encode_batch(texts, texts_b, max_len=max_len)
        order = np.argsort([len(e) for e in encodings], kind="stable")
        out: list[dict | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tok.pad([encodings[i] for i in rows]).to(device)
            with autocast(device, precision):
                logits = model(batch.input_ids, batch.segment_ids, batch.valid_lengths)
            logits = logits.float().cpu()
            if regression:
                for r, i in enumerate(rows):
                    out[i] = {"label": None, "score": float(logits[r, 0])}
            else:
                probs = torch.softmax(logits, dim=-1)
                p, idx = probs.max(dim=-1)
                for r, i in enumerate(rows):
                    out[i] = {"label": labels[int(idx[r])], "score": float(p[r])}
    return out
