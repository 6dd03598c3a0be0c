"""Batches of pretraining instances from a shard directory, for one process of a (DDP) job.

    loader = PretrainingLoader("shards/", batch_size=256, seed=0, rank=rank, world_size=world)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:      # dict of torch tensors, see `BATCH_KEYS`
            ...

- Lazy: one shard is in memory at a time (plus fewer than `batch_size` rows carried over).
- Shuffled deterministically from (`seed`, epoch): the shard order, the rows within each shard and
  the order of the batches all change every epoch, and are the same on every run.
- DDP: every shard's (shuffled) rows are dealt out to the ranks, `rows[rank::world_size]`, after
  dropping the last `n % world_size` rows of that shard for this epoch, so every rank gets exactly
  the same number of rows and therefore the same number of batches (no rank waits on a collective
  that the others never reach). Each rank reads every shard; shards are plain uncompressed arrays,
  so that costs disk reads, not decoding.
- Bucketing: within a shard, rows are sorted by length (random tie-breaks) and cut into batches, and
  the batches are shuffled; a batch is trimmed to its longest row, so little time goes to padding.
  Rows that do not fill a batch (a random choice) are carried into the next shard's pool, so the
  number of batches depends only on the row counts.
- Dynamic masking: shards written with `--dynamic-masking` hold no masks; each batch is masked
  afresh, from (`seed`, epoch, rank, batch index), by the same `mask_tokens` that writes static
  shards. It can also be forced on for masked shards (their `input_ids` are then already masked,
  which is rarely what you want) or given other settings than those in `stats.json`.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import BertkitError
from .masking import MaskingVocab, mask_tokens
from .shards import MASK_ARRAYS, list_shards, read_shard, read_stats

BATCH_KEYS = ("input_ids", "segment_ids", "valid_lengths", "masked_lm_positions", "masked_lm_ids",
              "masked_lm_weights", "next_sentence_labels")


def shard_rows(path: Path) -> int:
    """The number of instances in a shard, read from the `.npy` header only."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("valid_lengths.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(f)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise BertkitError(f"{path}: not a pretraining shard ({e})") from None
    return int(shape[0])


class PretrainingLoader:
    """Iterable over dict batches of torch tensors (int64, `masked_lm_weights` float32)."""

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        bucket: bool = True,
        dynamic_masking: bool | None = None,
        masked_lm_prob: float | None = None,
        max_predictions_per_seq: int | None = None,
        whole_word_mask: bool | None = None,
    ):
        if batch_size < 1:
            raise BertkitError(f"batch size {batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise BertkitError(f"rank {rank} is not in [0, world_size={world_size})")
        self.data_dir = Path(data_dir)
        self.shards = list_shards(self.data_dir)
        if not self.shards:
            raise BertkitError(f"{self.data_dir}: no .npz shards (make them with bertkit pretrain-data)")
        self.stats = read_stats(self.data_dir) or {}
        settings = self.stats.get("settings", {})
        self.shard_sizes = [shard_rows(p) for p in self.shards]
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.bucket = rank, world_size, drop_last, bucket
        self.epoch = 0

        with zipfile.ZipFile(self.shards[0]) as zf:
            has_masks = f"{MASK_ARRAYS[0]}.npy" in zf.namelist()
        self.dynamic_masking = (not has_masks) if dynamic_masking is None else bool(dynamic_masking)
        self.masked_lm_prob = masked_lm_prob or settings.get("masked_lm_prob", 0.15)
        self.max_predictions_per_seq = max_predictions_per_seq or settings.get("max_predictions_per_seq", 20)
        self.whole_word_mask = settings.get("whole_word_mask", False) if whole_word_mask is None else whole_word_mask
        self.max_seq_length = settings.get("max_seq_length")
        self.vocab_size = settings.get("vocab_size")
        self._masking = None
        if self.dynamic_masking or self.vocab_size is None:
            from ..tokenizer import load_vocab

            vocab = load_vocab(self.vocab_path)
            self._masking = MaskingVocab.from_vocab(vocab, source=str(self.vocab_path))
            self.vocab_size = self._masking.size
        if not self.dynamic_masking and not has_masks:
            raise BertkitError(f"{self.shards[0]}: shard holds no masks; use dynamic masking")

    # ---- sizes ----------------------------------------------------------------------------------
    @property
    def vocab_path(self) -> Path:
        return self.data_dir / "vocab.txt"

    @property
    def num_instances(self) -> int:
        """Rows this rank sees per epoch."""
        return sum(n // self.world_size for n in self.shard_sizes)

    def __len__(self) -> int:
        n = self.num_instances
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def tokenizer(self):
        """The tokenizer the shards were made with (vocab.txt copied into the directory)."""
        from ..tokenizer import BertTokenizer

        settings = self.stats.get("settings", {})
        return BertTokenizer(self.vocab_path, lowercase=settings.get("lowercase", True),
                             strip_accents=settings.get("strip_accents"))

    # ---- iteration ------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iter_epoch(self.epoch)

    def iter_epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        bs, world = self.batch_size, self.world_size
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)) if self.shuffle else range(len(self.shards))
        pool: dict[str, np.ndarray] | None = None
        batch_index = 0
        for s in order:
            rng = np.random.default_rng([self.seed, epoch, int(s)])
            arrays = read_shard(self.shards[s])
            n = len(arrays["valid_lengths"])
            rows = rng.permutation(n) if self.shuffle else np.arange(n)
            rows = rows[: n - n % world][self.rank :: world]
            part = {k: v[rows] for k, v in arrays.items()}
            del arrays
            pool = part if pool is None else {k: np.concatenate([pool[k], part[k]]) for k in part}
            m = len(pool["valid_lengths"])
            full = m - m % bs
            perm = rng.permutation(m) if self.shuffle else np.arange(m)
            keep, rest = perm[:full], perm[full:]
            if self.bucket:
                ties = rng.random(full) if self.shuffle else np.arange(full)
                keep = keep[np.lexsort((ties, pool["valid_lengths"][keep]))]
            batches = keep.reshape(-1, bs)
            if self.shuffle:
                batches = batches[rng.permutation(len(batches))]
            for rows_b in batches:
                yield self._make_batch(pool, rows_b, epoch, batch_index)
                batch_index += 1
            pool = {k: v[rest] for k, v in pool.items()}
        if pool is not None and len(pool["valid_lengths"]) and not self.drop_last:
            rows_b = np.arange(len(pool["valid_lengths"]))
            yield self._make_batch(pool, rows_b, epoch, batch_index)

    def _make_batch(self, pool: dict[str, np.ndarray], rows: np.ndarray, epoch: int, index: int) -> dict[str, torch.Tensor]:
        valid = pool["valid_lengths"][rows]
        width = int(valid.max())
        ids = pool["input_ids"][rows, :width]
        if self.dynamic_masking:
            rng = np.random.default_rng([self.seed, epoch, self.rank, index, 1])
            masked = mask_tokens(ids, valid, self._masking, rng, self.masked_lm_prob,
                                 self.max_predictions_per_seq, self.whole_word_mask)
            ids, positions, labels, weights = masked.input_ids, masked.positions, masked.labels, masked.weights
        else:
            positions = pool["masked_lm_positions"][rows]
            labels = pool["masked_lm_ids"][rows]
            weights = pool["masked_lm_weights"][rows]
        p = max(1, int((weights > 0).sum(axis=1).max()))
        as_long = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        return {
            "input_ids": as_long(ids),
            "segment_ids": as_long(pool["segment_ids"][rows, :width]),
            "valid_lengths": as_long(valid),
            "masked_lm_positions": as_long(positions[:, :p]),
            "masked_lm_ids": as_long(labels[:, :p]),
            "masked_lm_weights": torch.from_numpy(np.ascontiguousarray(weights[:, :p], dtype=np.float32)),
            "next_sentence_labels": as_long(pool["next_sentence_labels"][rows]),
        }
