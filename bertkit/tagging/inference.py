"""A token classifier's tag probabilities for each word of each sentence, batched."""

from __future__ import annotations

import numpy as np
import torch

from ..batches import sorted_batches
from ..device import evaluating, model_device, to_device
from .features import TaggedWindows


def word_probabilities(net, data: TaggedWindows, batch_size: int = 128) -> list[np.ndarray]:
    """Softmax over the labels at each word's first piece: one (words, labels) array per sentence."""
    device = model_device(net)
    out = [np.zeros((n, net.num_labels), dtype=np.float32) for n in data.n_words]
    with evaluating(net):
        for rows in sorted_batches(data.lengths, batch_size):
            ids, segs, lens, _ = to_device(data.batch(rows), device)
            probs = torch.softmax(net(ids, segs, lens).float(), dim=-1).cpu().numpy()
            for r, i in enumerate(rows):
                out[data.sentence[i]][data.words[i]] = probs[r, data.positions[i]]
    return out
