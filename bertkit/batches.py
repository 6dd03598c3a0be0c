"""Which examples go into which batch: plans of row indices, from example lengths alone.

Every job's data (`Encoded`, `TaggedWindows`, SQuAD `Features`) holds `lengths` and cuts a padded
batch out of any list of rows; these functions only choose the rows.

- `random_batches`: training batches, every example once per epoch, a function of the generator.
  Plain shuffled batches by default. `bucket` = N > 1 sorts each group of N batches by length first:
  less padding (attention is the one part of bertkit's model that computes on it), but a batch of
  similar lengths is a batch of similar texts, whose gradients are correlated (issue 18: -5.4 F1 on
  the CoNLL tagging split with N = 50).
- `token_budget_batches`: training batches of up to `max_tokens` real tokens each (fairseq's
  `max_tokens`, GluonNLP's `--use_avg_len`), the examples in random order: with the unpadded
  encoder, every step does about the same work whatever the lengths.
- `sorted_batches`: inference, sorted by length so each batch pads little; order does not matter there.
- `split_rows`: one rank's micro-batches of a global batch, for data-parallel training.
- `pad_rows`: the chosen rows' token ids as one padded array.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pad_rows(rows: Sequence[Sequence[int]], pad_value: int = 0) -> np.ndarray:
    """A (len(rows), longest row) int64 array: each row's values, then `pad_value`."""
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), pad_value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def random_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 1) -> list[np.ndarray]:
    """Every row once: shuffle, sort within groups of `bucket` batches, cut into batches, shuffle the
    batches. `bucket=1` gives plain random batches (consecutive slices of one permutation)."""
    order = rng.permutation(len(lengths))
    batches = []
    chunk = batch_size * bucket
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        if bucket > 1:
            part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def token_budget_batches(lengths: np.ndarray, max_tokens: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Every row once, in random order, cut greedily into batches of at most `max_tokens` real tokens.
    A row longer than the budget is an error the caller reports (`longest_row`)."""
    order = rng.permutation(len(lengths))
    batches, start, total = [], 0, 0
    for i, row in enumerate(order):
        n = int(lengths[row])
        if total + n > max_tokens and i > start:
            batches.append(order[start:i])
            start, total = i, 0
        total += n
    if start < len(order):
        batches.append(order[start:])
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Rows sorted by length, cut into batches (for inference, where batch order does not matter)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def split_rows(rows: np.ndarray, rank: int, world_size: int, accumulate: int) -> list[np.ndarray]:
    """This rank's `accumulate` micro-batches of a global batch: part m * world_size + rank of the
    batch cut into world_size * accumulate near-equal consecutive parts. A part may be empty when the
    batch has fewer rows than parts (the loop then contributes a zero gradient)."""
    parts = np.array_split(np.asarray(rows), world_size * accumulate)
    return [parts[m * world_size + rank] for m in range(accumulate)]
