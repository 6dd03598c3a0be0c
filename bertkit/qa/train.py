"""Fine-tuning a span-extraction head on SQuAD windows.

The loss is run_squad.py's: the mean of the cross-entropies of the start and the end position over
each window's tokens (padding excluded, so a window's loss does not depend on its batch). Batches
are random (`bucket_chunk` > 1 sorts groups of that many batches by length: less padding, but
correlated batches; train/finetune.py says what that costs), and the optimizer, schedule and step are the
ones every bertkit training loop uses.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BertkitError
from ..train.finetune import bucket_batches
from ..train.optim import apply_gradients, build_optimizer, linear_warmup_decay, warmup_steps_for
from .features import Features


def span_loss(start_logits, end_logits, valid_lengths, start_positions, end_positions):
    """Mean of the start and end cross-entropies, padded positions masked out."""
    positions = torch.arange(start_logits.shape[1], device=start_logits.device)
    pad = positions[None, :] >= valid_lengths[:, None]
    start_logits = start_logits.float().masked_fill(pad, float("-inf"))
    end_logits = end_logits.float().masked_fill(pad, float("-inf"))
    return (F.cross_entropy(start_logits, start_positions) + F.cross_entropy(end_logits, end_positions)) / 2


def train_spans(model, features: Features, epochs: int = 2, batch_size: int = 32, lr: float = 5e-5,
                accumulate: int = 1, warmup_ratio: float = 0.1, weight_decay: float = 0.01,
                max_grad_norm: float = 1.0, seed: int = 0, log=None, log_every: int = 20,
                progress: bool = True, bucket_chunk: int = 1) -> list[dict]:
    """Train `model` in place; returns one summary row per epoch. `log(row)` receives metrics rows."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    batches_per_epoch = math.ceil(len(features) / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate)
    total_steps = steps_per_epoch * epochs
    optimizer = build_optimizer(model, "adamw", lr, weight_decay)
    scheduler = linear_warmup_decay(optimizer, warmup_steps_for(total_steps, warmup_ratio), total_steps)
    starts = torch.from_numpy(features.start_positions)
    ends = torch.from_numpy(features.end_positions)
    step, summaries = 0, []
    model.train()
    for epoch in range(1, epochs + 1):
        batches = bucket_batches(features.lengths, batch_size, rng, bucket_chunk)
        t0 = last_t = time.perf_counter()
        epoch_loss = log_loss = 0.0
        seen = log_n = 0
        with tqdm(total=len(batches), desc=f"train epoch {epoch}/{epochs}", unit="batch", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0) as bar:
            for i, rows in enumerate(batches):
                ids, segs, lens = features.batch(rows)
                start_logits, end_logits = model(ids, segs, lens)
                loss = span_loss(start_logits, end_logits, lens, starts[rows], ends[rows])
                if not torch.isfinite(loss):
                    raise BertkitError(f"training diverged at epoch {epoch}, batch {i + 1} (loss {loss.item()}); try a lower --lr")
                (loss / accumulate).backward()
                value = loss.item() * len(rows)
                epoch_loss, log_loss, seen, log_n = epoch_loss + value, log_loss + value, seen + len(rows), log_n + len(rows)
                if (i + 1) % accumulate == 0 or i + 1 == len(batches):
                    apply_gradients(model.parameters(), optimizer, scheduler, max_grad_norm)
                    step += 1
                    if log is not None and step % log_every == 0:
                        now = time.perf_counter()
                        log({"epoch": epoch, "step": step, "loss": round(log_loss / log_n, 6),
                             "lr": scheduler.get_last_lr()[0], "windows_per_s": round(log_n / (now - last_t), 2)})
                        log_loss, log_n, last_t = 0.0, 0, now
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{epoch_loss / seen:.4f}", refresh=False)
        seconds = time.perf_counter() - t0
        summary = {"epoch": epoch, "step": step, "train_loss": round(epoch_loss / seen, 6),
                   "train_seconds": round(seconds, 2), "train_windows_per_s": round(seen / seconds, 2)}
        if log is not None:
            log(summary)
        summaries.append(summary)
    model.eval()
    return summaries
