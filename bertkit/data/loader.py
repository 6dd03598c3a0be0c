"""Batches of pretraining instances from a shard directory, for one process or for every rank of a
data-parallel (DDP) job.

    loader = PretrainingLoader("shards/", batch_size=256, seed=0)
    for epoch in range(epochs):
        for batch in loader.iter_epoch(epoch):      # the global batch: dict of torch tensors
            ...
        for micro in loader.rank_batches(epoch, rank, world, accumulate):   # this rank's share
            ...                                     # `accumulate` dicts per global batch

- Shuffled deterministically from (`seed`, epoch): the shard order, the rows within each shard and
  the order of the batches all change every epoch, and are the same on every run.
- One batch plan: which rows form each global batch is worked out from the shards' `valid_lengths`
  alone (plus `seed`, epoch and the shard sizes), one shard at a time, and never depends on the
  world size. `iter_epoch` yields those global batches; `rank_batches(epoch, rank, world, accumulate)`
  yields, for each of the same global batches, this rank's `accumulate` micro-batches: micro-batch m
  is rows [(m * world + rank) * per, ... + per) of the global batch, per = batch_size // (world *
  accumulate), each trimmed to its longest row and to its most predictions. Laid end to end in the
  order (m * world + rank), the micro-batches of all ranks are the global batch, row for row.
- Reading: shards are zips of uncompressed `.npy` arrays (see `shard_reader`), so a row is a few
  byte ranges at known offsets. The plan reads the `valid_lengths` of every shard; then only the rows
  of the other arrays that the batches being made need are read, one read per run of consecutive
  rows. A rank of an N-process job so reads about 1/N of the data (plus all `valid_lengths`, 4 bytes
  a row); `bytes_read` counts the array bytes read so far. A compressed member (shards written with
  `np.savez_compressed`) is read whole instead, with the same result.
- Lazy: the plan holds one shard's lengths at a time (plus fewer than `batch_size` rows carried over);
  the rows of the batches cut from one shard are read together, then those batches are yielded.
- Bucketing: within a shard, rows are sorted by length (random tie-breaks) and cut into batches, and
  the batches are shuffled; a batch is trimmed to its longest row, so little time goes to padding.
  Rows that do not fill a batch (a random choice) are carried into the next shard's pool, so the
  number of batches depends only on the row counts. Without `drop_last` the rows left at the end form
  a last, smaller batch; `rank_batches` splits it as evenly as it can (rows [j * n // K, (j + 1) * n //
  K) for part j of K = world * accumulate), so a part may be empty when n < K.
- Dynamic masking: shards written with `--dynamic-masking` hold no masks; each row is masked afresh
  by the same `mask_tokens` that writes static shards, as `mask_tokens(row[:valid_length], ...)` with
  its own generator, `row_generators(seed, epoch, global batch index, [position of the row in the
  global batch])` (a substream of one PCG64 stream per global batch), vectorised over the rows with
  the same draws. The masks are therefore the same whatever the world size and however a batch is
  cut. (Up to now a whole batch was masked with a generator seeded by (`seed`, epoch, rank, batch
  index), so dynamic masks differ from those of older versions; static batches are unchanged.) It
  can also be forced on for masked shards (their `input_ids` are then already masked, which is rarely
  what you want) or given other settings than those in `stats.json`.
- `rank` / `world_size` in the constructor are the older way to split the data: every shard's
  (shuffled) rows are dealt out to the ranks, `rows[rank::world_size]`, after dropping the last
  `n % world_size` rows of that shard for this epoch, so every rank gets the same number of rows and
  of batches; each rank then has its own, different batches. `rank_batches` needs world_size=1 there.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import BertkitError
from .masking import MaskingVocab, mask_tokens
from .shard_reader import ShardFile
from .shards import INSTANCE_ARRAYS, MASK_ARRAYS, check_one_kind, holds_pairs, list_shards, read_stats, shard_directory

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


@dataclass(frozen=True)
class PlannedBatch:
    """One global batch of the plan: its rows, in batch order."""

    index: int  # the batch's index in the epoch
    shards: np.ndarray  # (n,) index into `loader.shards` of each row
    rows: np.ndarray  # (n,) the row within that shard
    valid_lengths: np.ndarray  # (n,) int32


ROW_STREAM = 1 << 32  # the draws of one row's masking: a substream of the batch's PCG64 stream


def row_generators(seed: int, epoch: int, index: int, slots) -> Iterator[np.random.Generator]:
    """The generator that masks the row at each slot of global batch `index`: PCG64 seeded by
    SeedSequence([seed, epoch, index, 1]), advanced by slot * 2**32 (disjoint substreams: a row
    draws far fewer values). One generator object is reset for each slot, so use each before the
    next is made."""
    start = np.random.PCG64(np.random.SeedSequence([seed, epoch, index, 1])).state
    bits = np.random.PCG64()
    g = np.random.Generator(bits)
    for slot in slots:
        bits.state = start
        bits.advance(int(slot) * ROW_STREAM)
        yield g


class _RowDraws:
    """Stands in for the generator given to `mask_tokens`: serves, for a stack of rows, exactly the
    draws that `mask_tokens(row[None, :valid], ...)` makes with each row's own generator (keys for
    the valid positions, then the action and random-id draws), so masking the stack at once gives
    each row the mask it gets alone. Keys past a row's length are never looked at (not candidates)."""

    def __init__(self, rngs: Iterator[np.random.Generator], valid: np.ndarray, width: int, predictions: int,
                 vocab_size: int):
        n = len(valid)
        keys = np.full((n, width), 2.0)
        action = np.empty((n, predictions))
        random_ids = np.empty((n, predictions), dtype=np.int64)
        for i, (g, v) in enumerate(zip(rngs, valid.tolist())):
            g.random(out=keys[i, :v])
            g.random(out=action[i])
            random_ids[i] = g.integers(0, vocab_size, size=predictions)
        self._draws = [("random", ((n, width),), keys), ("random", ((n, predictions),), action),
                       ("integers", (0, vocab_size, (n, predictions)), random_ids)]

    def _next(self, kind: str, args: tuple) -> np.ndarray:
        want_kind, want_args, value = self._draws.pop(0) if self._draws else (None, None, None)
        if (kind, args) != (want_kind, want_args):
            raise RuntimeError(f"mask_tokens drew {kind}{args}, expected {want_kind}{want_args}: "
                               "update loader._RowDraws to follow masking.mask_tokens")
        return value

    def random(self, size):
        return self._next("random", (tuple(size),))

    def integers(self, low, high=None, size=None):
        return self._next("integers", (low, high, tuple(size)))


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
        max_tokens: int | None = None,
    ):
        if batch_size < 1:
            raise BertkitError(f"batch size {batch_size} must be at least 1")
        if not 0 <= rank < world_size:
            raise BertkitError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shards = list_shards(data_dir)  # a directory, or a glob pattern of shard files
        self.data_dir = shard_directory(data_dir) if self.shards else Path(data_dir)
        if not self.shards:
            raise BertkitError(f"{self.data_dir}: no .npz shards (make them with bertkit pretrain-data)")
        check_one_kind(data_dir, self.shards)  # a glob over several directories: one kind of shards
        self.stats = read_stats(self.data_dir) or {}
        settings = self.stats.get("settings", {})
        self.shard_sizes = [shard_rows(p) for p in self.shards]
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.bucket = rank, world_size, drop_last, bucket
        self.max_tokens = max_tokens  # cut batches by real tokens instead of `batch_size` rows
        self.epoch = 0
        self.bytes_read = 0  # bytes of array data read from the shard files so far (see the module doc)
        self._files: dict[int, ShardFile] = {}

        has_masks = MASK_ARRAYS[0] in self._file(0)
        self.dynamic_masking = (not has_masks) if dynamic_masking is None else bool(dynamic_masking)
        self.masked_lm_prob = masked_lm_prob or settings.get("masked_lm_prob", 0.15)
        self.max_predictions_per_seq = max_predictions_per_seq or settings.get("max_predictions_per_seq", 20)
        self.whole_word_mask = settings.get("whole_word_mask", False) if whole_word_mask is None else whole_word_mask
        self.max_seq_length = settings.get("max_seq_length")
        self.nsp = holds_pairs(self.stats)  # False: --no-nsp shards, single segments for the masked LM alone
        self.vocab_size = settings.get("vocab_size")
        self._masking = None
        if self.dynamic_masking or self.vocab_size is None:
            from ..tokenizer import load_vocab

            vocab = load_vocab(self.vocab_path)
            self._masking = MaskingVocab.from_vocab(vocab, source=str(self.vocab_path))
            self.vocab_size = self._masking.size
        if not self.dynamic_masking and not has_masks:
            raise BertkitError(f"{self.shards[0]}: shard holds no masks; use dynamic masking")
        # the arrays read row by row (the plan already has valid_lengths)
        self._row_arrays = ("input_ids", "segment_ids", "next_sentence_labels") + (() if self.dynamic_masking else MASK_ARRAYS)

    # ---- sizes ----------------------------------------------------------------------------------
    @property
    def vocab_path(self) -> Path:
        return self.data_dir / "vocab.txt"

    @property
    def num_instances(self) -> int:
        """Rows this rank sees per epoch (with constructor `world_size`; all rows otherwise)."""
        return sum(n // self.world_size for n in self.shard_sizes)

    def __len__(self) -> int:
        """Batches per epoch: of `iter_epoch`, and of `rank_batches` (lists of micro-batches)."""
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
        """The global batches of an epoch (this rank's own batches, with constructor `world_size` > 1)."""
        for (batch,) in self._batches(epoch, rank=0, world_size=1, accumulate=1):
            yield batch

    def rank_batches(self, epoch: int, rank: int, world_size: int, accumulate: int = 1, *,
                     start: int = 0) -> Iterator[list[dict[str, torch.Tensor]]]:
        """For each global batch of `iter_epoch(epoch)`, in order, rank `rank`'s `accumulate` micro-batches.

        Micro-batch m holds rows [(m * world_size + rank) * per, ... + per) of the global batch, per =
        batch_size // (world_size * accumulate), trimmed to its longest row and to its most real
        predictions (at least 1). Only the `valid_lengths` arrays and this rank's rows are read.
        (A last, smaller batch, without `drop_last`, is split as evenly as possible; see the module doc.)
        `start` skips the first global batches without reading their rows (to resume mid-epoch).
        A rank sees only its own rows, so a count over the global batch (such as its real masked
        positions, to normalise the MLM loss) is a sum over the ranks' micro-batches (all-reduce).
        """
        if self.world_size != 1:
            raise BertkitError(f"rank_batches splits the global batches itself, but this loader already deals "
                               f"rows to {self.world_size} ranks (make it with world_size=1)")
        if world_size < 1 or accumulate < 1 or not 0 <= rank < world_size:
            raise BertkitError(f"rank {rank}, world size {world_size}, accumulate {accumulate}: need "
                               "0 <= rank < world_size and accumulate >= 1")
        if self.max_tokens is None and self.batch_size % (world_size * accumulate):
            raise BertkitError(f"batch size {self.batch_size} is not divisible by {world_size} process(es) x "
                               f"accumulate {accumulate}")
        return self._batches(epoch, rank, world_size, accumulate, start)

    def batch_plan(self, epoch: int) -> Iterator[PlannedBatch]:
        """The rows of each global batch of an epoch, in order (reads only `valid_lengths`)."""
        for step in self._plan(epoch):
            yield from step

    def _plan(self, epoch: int) -> Iterator[list[PlannedBatch]]:
        """The global batches cut after each shard joins the pool (a list per shard, maybe empty), then
        the last, smaller batch (without `drop_last`) on its own. Computed from (seed, epoch, shard
        sizes, valid_lengths) only; with constructor `world_size` > 1, from this rank's dealt rows."""
        bs, world = self.batch_size, self.world_size
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)) if self.shuffle else range(len(self.shards))
        pool_shard = np.zeros(0, dtype=np.int64)
        pool_row = np.zeros(0, dtype=np.int64)
        pool_len = np.zeros(0, dtype=np.int32)
        batch_index = 0
        for s in order:
            s = int(s)
            rng = np.random.default_rng([self.seed, epoch, s])
            lengths, nbytes = self._file(s).read("valid_lengths")
            self.bytes_read += nbytes
            n = len(lengths)
            rows = rng.permutation(n) if self.shuffle else np.arange(n)
            rows = rows[: n - n % world][self.rank :: world]
            pool_shard = np.concatenate([pool_shard, np.full(len(rows), s, dtype=np.int64)])
            pool_row = np.concatenate([pool_row, rows.astype(np.int64)])
            pool_len = np.concatenate([pool_len, lengths[rows]])
            m = len(pool_len)
            if self.max_tokens is None:
                full = m - m % bs
                perm = rng.permutation(m) if self.shuffle else np.arange(m)
                keep, rest = perm[:full], perm[full:]
                if self.bucket:
                    ties = rng.random(full) if self.shuffle else np.arange(full)
                    keep = keep[np.lexsort((ties, pool_len[keep]))]
                batches = keep.reshape(-1, bs)
            else:
                batches, rest = self._token_budget_cut(pool_len, rng)
            if self.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            step = []
            for b in batches:
                step.append(PlannedBatch(batch_index, pool_shard[b], pool_row[b], pool_len[b]))
                batch_index += 1
            yield step
            pool_shard, pool_row, pool_len = pool_shard[rest], pool_row[rest], pool_len[rest]
        if len(pool_len) and not self.drop_last:
            yield [PlannedBatch(batch_index, pool_shard, pool_row, pool_len)]

    def _token_budget_cut(self, pool_len: np.ndarray, rng: np.random.Generator):
        """`max_tokens` batches: the pool (sorted by length when bucketing, random tie-breaks) cut
        greedily into batches of at most `max_tokens` real tokens; the rows of a last, unfilled
        batch are carried into the next shard's pool. Returns (batches, carried rows)."""
        m = len(pool_len)
        perm = rng.permutation(m) if self.shuffle else np.arange(m)
        if self.bucket:
            ties = rng.random(m) if self.shuffle else np.arange(m)
            perm = perm[np.lexsort((ties, pool_len[perm]))]
        ends = np.cumsum(pool_len[perm].astype(np.int64))
        batches, start, base = [], 0, 0
        while start < m:
            stop = max(int(np.searchsorted(ends, base + self.max_tokens, side="right")), start + 1)
            if stop >= m and ends[-1] - base < self.max_tokens:
                break  # not full: carried over
            batches.append(perm[start:stop])
            base, start = int(ends[stop - 1]), stop
        return batches, perm[start:]

    def _batches(self, epoch: int, rank: int, world_size: int, accumulate: int,
                 start: int = 0) -> Iterator[list[dict[str, torch.Tensor]]]:
        """Per global batch from `start` on, the micro-batches j = m * world_size + rank (m <
        accumulate) of its world_size * accumulate parts; the rows of one plan step are read together."""
        parts = world_size * accumulate
        for step in self._plan(epoch):
            step = [b for b in step if b.index >= start]
            if not step:
                continue
            spans = []  # per batch: the (lo, hi) rows of each of this rank's micro-batches
            for b in step:
                n = len(b.rows)
                spans.append([(j * n // parts, (j + 1) * n // parts) for j in range(rank, parts, world_size)])
            data = self._read_rows(
                np.concatenate([b.shards[lo:hi] for b, sp in zip(step, spans) for lo, hi in sp]),
                np.concatenate([b.rows[lo:hi] for b, sp in zip(step, spans) for lo, hi in sp]),
            )
            at = 0
            for b, sp in zip(step, spans):
                micro = []
                for lo, hi in sp:
                    part = {k: v[at : at + hi - lo] for k, v in data.items()}
                    at += hi - lo
                    micro.append(self._make_batch(part, b.valid_lengths[lo:hi], epoch, b.index, np.arange(lo, hi)))
                yield micro

    # ---- reading --------------------------------------------------------------------------------
    def _file(self, s: int) -> ShardFile:
        f = self._files.get(s)
        if f is None:
            f = ShardFile(self.shards[s])
            missing = [name for name in INSTANCE_ARRAYS if name not in f]
            if missing:
                raise BertkitError(f"{f.path}: shard lacks the array(s) {', '.join(missing)}")
            self._files[s] = f
        return f

    def _read_rows(self, shards: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The row-read arrays at (shards[i], rows[i]), in that order. Each shard's rows are read
        once, sorted, one read per run of consecutive rows per array."""
        out: dict[str, np.ndarray] = {}
        for s in np.unique(shards).tolist() or [0]:  # (shard 0 for the shapes of an empty read)
            f = self._file(s)
            missing = [name for name in self._row_arrays if name not in f]
            if missing:
                raise BertkitError(f"{f.path}: shard lacks the array(s) {', '.join(missing)}")
            if not out:
                out = {name: np.empty((len(rows), *f.members[name].row_shape), dtype=f.members[name].dtype)
                       for name in self._row_arrays}
            where = np.flatnonzero(shards == s)
            if not len(where):
                continue
            unique, inverse = np.unique(rows[where], return_inverse=True)
            got, nbytes = f.read_rows(self._row_arrays, unique)
            self.bytes_read += nbytes
            for name, a in got.items():
                out[name][where] = a[inverse]
        return out

    # ---- batches --------------------------------------------------------------------------------
    def _mask_rows(self, ids: np.ndarray, valid: np.ndarray, epoch: int, index: int, slots: np.ndarray):
        """Each row masked as by `mask_tokens(row[None, :valid], ...)` with its own generator,
        `row_generators(seed, epoch, global batch index, [slot in the global batch])`."""
        rngs = row_generators(self.seed, epoch, index, slots.tolist())
        draws = _RowDraws(rngs, valid, ids.shape[1], self.max_predictions_per_seq, self._masking.size)
        return mask_tokens(ids, valid, self._masking, draws, self.masked_lm_prob, self.max_predictions_per_seq,
                           self.whole_word_mask)

    def _make_batch(self, data: dict[str, np.ndarray], valid: np.ndarray, epoch: int, index: int,
                    slots: np.ndarray) -> dict[str, torch.Tensor]:
        """A batch of the rows in `data` (row-read arrays), at positions `slots` of global batch `index`."""
        width = int(valid.max(initial=0))
        ids = data["input_ids"][:, :width]
        if self.dynamic_masking:
            masked = self._mask_rows(ids, valid, epoch, index, slots)
            ids, positions, labels, weights = masked.input_ids, masked.positions, masked.labels, masked.weights
        else:
            positions = data["masked_lm_positions"]
            labels = data["masked_lm_ids"]
            weights = data["masked_lm_weights"]
        p = max(1, int((weights > 0).sum(axis=1).max(initial=0)))
        as_long = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        return {
            "input_ids": as_long(ids),
            "segment_ids": as_long(data["segment_ids"][:, :width]),
            "valid_lengths": as_long(valid),
            "masked_lm_positions": as_long(positions[:, :p]),
            "masked_lm_ids": as_long(labels[:, :p]),
            "masked_lm_weights": torch.from_numpy(np.ascontiguousarray(weights[:, :p], dtype=np.float32)),
            "next_sentence_labels": as_long(data["next_sentence_labels"]),
        }
