"""Fine-tuning a span-extraction head on SQuAD windows, with the one training loop.

The loss is run_squad.py's: the mean of the cross-entropies of the start and the end position over
each window's tokens (padding excluded, so a window's loss does not depend on its batch), averaged
over the windows of the global batch. Batches are random (`bucket_batches` > 1 sorts groups of that
many batches by length: less padding, but correlated batches; bertkit/batches.py says what that
costs), and everything else (device, precision, processes, checkpoints, resume) is the loop's
(train/loop.py), as for every bertkit training job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..train.finetune import RowsJob, run_finetune
from .features import Features


def span_loss(start_logits, end_logits, valid_lengths, start_positions, end_positions, reduction: str = "mean"):
    """Mean (or, with reduction="sum", the sum over windows) of the start and end cross-entropies,
    padded positions masked out."""
    positions = torch.arange(start_logits.shape[1], device=start_logits.device)
    pad = positions[None, :] >= valid_lengths[:, None]
    start_logits = start_logits.float().masked_fill(pad, float("-inf"))
    end_logits = end_logits.float().masked_fill(pad, float("-inf"))
    return (F.cross_entropy(start_logits, start_positions, reduction=reduction)
            + F.cross_entropy(end_logits, end_positions, reduction=reduction)) / 2


class SpanBatches:
    """SQuAD training windows as the loop's rows: `batch(rows)` adds the start and end targets."""

    def __init__(self, features: Features):
        self.features, self.lengths = features, features.lengths
        self.starts = torch.from_numpy(features.start_positions)
        self.ends = torch.from_numpy(features.end_positions)

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, rows):
        ids, segs, lens = self.features.batch(rows)
        return ids, segs, lens, self.starts[rows], self.ends[rows]


def span_loss_sums(model, batch) -> dict[str, torch.Tensor]:
    ids, segs, lens, starts, ends = batch
    start_logits, end_logits = model(ids, segs, lens)
    return {"loss": span_loss(start_logits, end_logits, lens, starts, ends, reduction="sum")}


def train_spans(model, features: Features, config, out, ctx, tokenizer=None, info: dict | None = None,
                quiet: bool = False, checkpoints: bool = True):
    """Train `model` in place on the windows (`config`: a SquadConfig, or any TrainConfig); returns
    the loop's result. `checkpoints=False` (a model bertkit cannot save, e.g. a reference
    implementation's) writes no resumable checkpoints."""
    job = RowsJob("squad", SpanBatches(features), config, span_loss_sums, None, None, tokenizer, info or {})
    return run_finetune(job, model, out, config, f"squad train: {len(features)} windows, lr {config.lr}", ctx, quiet,
                        checkpoints=checkpoints)
