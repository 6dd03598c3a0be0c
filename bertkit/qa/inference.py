"""Start and end logits of every window, batched by length."""

from __future__ import annotations

import sys

import numpy as np

from ..batches import sorted_batches
from ..device import evaluating, model_device, to_device
from .features import Features


def window_logits(model, features: Features, batch_size: int = 64, progress: bool = True,
                  desc: str = "predict") -> list[tuple[np.ndarray, np.ndarray]]:
    """(start logits, end logits) of each window, each (window length,) float32, in window order.

    Windows of similar length share a batch, so there is little padding (and bertkit's encoder skips
    what there is)."""
    from tqdm import tqdm

    with evaluating(model):
        device = model_device(model)
        out: list = [None] * len(features)
        batches = sorted_batches(features.lengths, batch_size)
        with tqdm(total=len(features), desc=desc, unit="window", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:
            for rows in batches:
                ids, segs, lens = to_device(features.batch(rows), device)
                start, end = model(ids, segs, lens)
                start, end = start.float().cpu().numpy(), end.float().cpu().numpy()
                for r, i in enumerate(rows):
                    n = features.lengths[i]
                    out[i] = (start[r, :n].copy(), end[r, :n].copy())
                bar.update(len(rows))
    return out
