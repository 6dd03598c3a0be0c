"""`PretrainingLoader.rank_batches`: each rank of a data-parallel job reads its own rows only, and the
micro-batches of all ranks, laid end to end, are exactly the 1-process global batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bertkit.data.loader import BATCH_KEYS, PretrainingLoader
from bertkit.data.masking import MaskingVocab, mask_tokens
from bertkit.data.shard_reader import ShardFile
from bertkit.data.shards import read_shard, shard_name, write_shard, write_stats
from bertkit.errors import BertkitError

T, P = 32, 5  # max_seq_length, max_predictions_per_seq of the test shards
SIZES = (170, 90, 230, 60, 150, 120)  # rows per shard: 820 in all
TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(80)] + [f"##p{i}" for i in range(40)]
VOCAB = {t: i for i, t in enumerate(TOKENS)}


def make_shards(out: Path, dynamic: bool, seed: int = 0) -> Path:
    """Random `[CLS] A [SEP] B [SEP]` instances of varied lengths, written by `write_shard`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(TOKENS) + "\n", encoding="utf-8")
    masking = MaskingVocab.from_vocab(VOCAB)
    rng = np.random.default_rng(seed)
    for k, n in enumerate(SIZES):
        valid = rng.integers(8, T + 1, n).astype(np.int32)
        ids = np.zeros((n, T), np.int32)
        seg = np.zeros((n, T), np.int32)
        for i, v in enumerate(valid.tolist()):
            a = int(rng.integers(2, v - 3))
            ids[i, :v] = rng.integers(5, len(TOKENS), v)
            ids[i, [0, a, v - 1]] = [VOCAB["[CLS]"], VOCAB["[SEP]"], VOCAB["[SEP]"]]
            seg[i, a + 1 : v] = 1
        arrays = {"input_ids": ids, "segment_ids": seg}
        if not dynamic:
            m = mask_tokens(ids, valid, masking, rng, 0.15, P)
            arrays = {"input_ids": m.input_ids, "segment_ids": seg, "masked_lm_positions": m.positions,
                      "masked_lm_ids": m.labels, "masked_lm_weights": m.weights}
        arrays["next_sentence_labels"] = rng.integers(0, 2, n).astype(np.int32)
        arrays["valid_lengths"] = valid
        write_shard(out / shard_name(k), arrays)
    write_stats(out, {"instances": sum(SIZES), "dynamic_masking": dynamic,
                      "settings": {"max_seq_length": T, "max_predictions_per_seq": P, "masked_lm_prob": 0.15,
                                   "whole_word_mask": False, "vocab_size": len(TOKENS)}})
    return out


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sharded")
    return {"static": make_shards(root / "static", dynamic=False), "dynamic": make_shards(root / "dynamic", dynamic=True)}


def as_numpy(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def reassemble(micro: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Micro-batches in order, re-padded to a common width / prediction count and stacked."""
    width = max(m["input_ids"].shape[1] for m in micro)
    p = max(m["masked_lm_weights"].shape[1] for m in micro)
    out = {}
    for k in BATCH_KEYS:
        parts = []
        for m in micro:
            a = m[k]
            if a.ndim == 2:
                to = width if k in ("input_ids", "segment_ids") else p
                a = np.pad(a, ((0, 0), (0, to - a.shape[1])))
            parts.append(a)
        out[k] = np.concatenate(parts)
    return out


def check_trimmed(m: dict[str, np.ndarray]) -> None:
    assert set(m) == set(BATCH_KEYS)
    assert m["input_ids"].shape[1] == m["segment_ids"].shape[1] == int(m["valid_lengths"].max(initial=0))
    real = int((m["masked_lm_weights"] > 0).sum(axis=1).max(initial=0))
    assert m["masked_lm_positions"].shape[1] == m["masked_lm_ids"].shape[1] == m["masked_lm_weights"].shape[1] == max(1, real)
    assert m["masked_lm_weights"].dtype == np.float32 and m["input_ids"].dtype == np.int64


def run_ranks(directory: Path, epoch: int, world: int, accumulate: int, **kw):
    """Every rank's micro-batches (one loader per rank, as in a real job) and each rank's bytes_read."""
    per_rank, read = [], []
    for r in range(world):
        loader = PretrainingLoader(directory, **kw)
        per_rank.append([[as_numpy(m) for m in micro] for micro in loader.rank_batches(epoch, r, world, accumulate)])
        read.append(loader.bytes_read)
    return per_rank, read


def global_from_ranks(per_rank, world: int, accumulate: int) -> list[dict[str, np.ndarray]]:
    counts = {len(batches) for batches in per_rank}
    assert len(counts) == 1  # every rank steps through the same number of global batches
    out = []
    for b in range(counts.pop()):
        micro = [None] * (world * accumulate)
        for r in range(world):
            assert len(per_rank[r][b]) == accumulate
            for m, part in enumerate(per_rank[r][b]):
                check_trimmed(part)
                micro[m * world + r] = part
        out.append(reassemble(micro))
    return out


def assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for k in BATCH_KEYS:
            assert g[k].dtype == w[k].dtype, k
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)


# ---- rank_batches reassembled == iter_epoch ---------------------------------------------------------


@pytest.mark.parametrize("masking", ["static", "dynamic"])
@pytest.mark.parametrize("bucket", [True, False])
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_ranks_reassemble_the_global_batches(shard_dirs, masking, bucket, accumulate, world):
    kw = dict(batch_size=32, seed=7, bucket=bucket)  # no drop_last: the last batch (20 rows) is split too
    one = PretrainingLoader(shard_dirs[masking], **kw)
    want = [as_numpy(b) for b in one.iter_epoch(1)]
    assert len(want) == len(one) == 26 and len(want[-1]["valid_lengths"]) == 820 % 32
    per_rank, _ = run_ranks(shard_dirs[masking], 1, world, accumulate, **kw)
    for r in range(world):  # full batches: micro-batch m of rank r is rows (m * world + r) * per ...
        per = 32 // (world * accumulate)
        assert all(len(micro["valid_lengths"]) == per for micro in per_rank[r][0])
    assert_same_batches(global_from_ranks(per_rank, world, accumulate), want)


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_epochs_differ_and_seeds_reproduce(shard_dirs, masking):
    def rank0(seed, epoch):
        loader = PretrainingLoader(shard_dirs[masking], batch_size=32, seed=seed, drop_last=True)
        return [micro[0]["input_ids"].tolist() + micro[0]["masked_lm_positions"].tolist()
                for micro in loader.rank_batches(epoch, 0, 4, 1)]

    first = rank0(3, 0)
    assert first == rank0(3, 0)
    assert first != rank0(3, 1)
    assert first != rank0(4, 0)


def test_unshuffled_and_drop_last(shard_dirs):
    for kw in (dict(shuffle=False), dict(drop_last=True), dict(shuffle=False, bucket=False, drop_last=True)):
        want = [as_numpy(b) for b in PretrainingLoader(shard_dirs["dynamic"], batch_size=16, **kw).iter_epoch(0)]
        per_rank, _ = run_ranks(shard_dirs["dynamic"], 0, 4, 2, batch_size=16, **kw)
        assert_same_batches(global_from_ranks(per_rank, 4, 2), want)


# ---- dynamic masking is a function of the row and the global batch only --------------------------


@pytest.mark.parametrize("whole_word", [False, True])
def test_dynamic_masks_are_per_row(shard_dirs, whole_word):
    directory = shard_dirs["dynamic"]
    loader = PretrainingLoader(directory, batch_size=32, seed=5, whole_word_mask=whole_word)
    assert loader.dynamic_masking
    shards = [read_shard(p) for p in loader.shards]
    masking = MaskingVocab.from_vocab(VOCAB)
    batches = list(loader.iter_epoch(2))
    plan = list(loader.batch_plan(2))
    assert [b.index for b in plan] == list(range(len(batches)))
    for planned, batch in zip(plan, batches):
        batch = as_numpy(batch)
        for slot, (s, row) in enumerate(zip(planned.shards.tolist(), planned.rows.tolist())):
            v = int(shards[s]["valid_lengths"][row])
            assert batch["valid_lengths"][slot] == v
            bits = np.random.PCG64(np.random.SeedSequence([5, 2, planned.index, 1]))  # (seed, epoch, batch, 1)
            rng = np.random.Generator(bits.advance(slot << 32))  # the row's own substream
            alone = mask_tokens(shards[s]["input_ids"][row : row + 1, :v], np.array([v]), masking, rng, 0.15, P, whole_word)
            np.testing.assert_array_equal(batch["input_ids"][slot, :v], alone.input_ids[0])
            assert not batch["input_ids"][slot, v:].any()
            p = batch["masked_lm_positions"].shape[1]
            np.testing.assert_array_equal(batch["masked_lm_positions"][slot], alone.positions[0, :p])
            np.testing.assert_array_equal(batch["masked_lm_ids"][slot], alone.labels[0, :p])
            np.testing.assert_array_equal(batch["masked_lm_weights"][slot], alone.weights[0, :p])
            assert alone.weights[0, p:].sum() == 0


def test_static_batches_hold_the_shard_rows(shard_dirs):
    loader = PretrainingLoader(shard_dirs["static"], batch_size=32, seed=1)
    shards = [read_shard(p) for p in loader.shards]
    seen = set()
    for planned, batch in zip(loader.batch_plan(0), loader.iter_epoch(0)):
        for slot, (s, row) in enumerate(zip(planned.shards.tolist(), planned.rows.tolist())):
            width = batch["input_ids"].shape[1]
            np.testing.assert_array_equal(batch["input_ids"][slot].numpy(), shards[s]["input_ids"][row, :width])
            assert not shards[s]["input_ids"][row, width:].any()
            seen.add((s, row))
    assert len(seen) == sum(SIZES)


# ---- reading ---------------------------------------------------------------------------------------


def row_bytes(loader: PretrainingLoader) -> int:
    """Bytes of one row of the arrays read row by row (all but valid_lengths)."""
    a = read_shard(loader.shards[0])
    names = ["input_ids", "segment_ids", "next_sentence_labels"] + ([] if loader.dynamic_masking else
                                                                   ["masked_lm_positions", "masked_lm_ids", "masked_lm_weights"])
    return sum(a[k][0].nbytes for k in names)


@pytest.mark.parametrize("masking", ["static", "dynamic"])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_each_rank_reads_its_rows_only(shard_dirs, masking, accumulate):
    kw = dict(batch_size=32, seed=2, drop_last=True)
    one = PretrainingLoader(shard_dirs[masking], **kw)
    n_batches = sum(1 for _ in one.iter_epoch(0))
    lengths_bytes = 4 * sum(SIZES)  # every shard's valid_lengths (int32), once per epoch
    rb = row_bytes(one)
    assert n_batches == 820 // 32 and one.bytes_read == lengths_bytes + n_batches * 32 * rb
    world = 8
    _, read = run_ranks(shard_dirs[masking], 0, world, accumulate, **kw)
    expected = lengths_bytes + n_batches * (32 // world) * rb
    assert read == [expected] * world
    share = expected / one.bytes_read  # 820*4 + 25*4*rb over 820*4 + 25*32*rb: ~0.14 static, ~0.16 dynamic
    assert share < 0.2
    print(f"{masking}: rank bytes {expected}, 1-rank {one.bytes_read}, share {share:.3f}")


def test_shard_file_reads_rows(shard_dirs, tmp_path):
    path = PretrainingLoader(shard_dirs["static"], batch_size=8).shards[2]
    arrays = read_shard(path)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    np.savez(tmp_path / "u.npz", **arrays)
    rng = np.random.default_rng(0)
    rows = np.unique(rng.integers(0, len(arrays["valid_lengths"]), 60))
    rows = np.unique(np.concatenate([rows, np.arange(10, 30)]))  # with a long run
    for p, stored in ((path, True), (tmp_path / "u.npz", True), (tmp_path / "c.npz", False)):
        f = ShardFile(p)
        assert all((m.offset is not None) == stored for m in f.members.values())
        got, nbytes = f.read_rows(list(arrays), rows)
        for k, a in arrays.items():
            np.testing.assert_array_equal(got[k], a[rows])
            assert got[k].dtype == a.dtype
        row_total = sum(a[0].nbytes for a in arrays.values())
        assert nbytes == (len(rows) * row_total if stored else sum(a.nbytes for a in arrays.values()))
        whole, nbytes = f.read("input_ids")
        np.testing.assert_array_equal(whole, arrays["input_ids"])
        assert nbytes == arrays["input_ids"].nbytes
        empty, nbytes = f.read_rows(["input_ids"], np.zeros(0, dtype=np.int64))
        assert empty["input_ids"].shape == (0, T) and (nbytes == 0 or not stored)


def test_compressed_shard_still_works(shard_dirs, tmp_path):
    directory = tmp_path / "mixed"
    shutil.copytree(shard_dirs["static"], directory)
    victim = directory / shard_name(2)
    arrays = read_shard(victim)
    victim.unlink()
    np.savez_compressed(victim, **arrays)  # (np adds no suffix: the name ends in .npz already)
    kw = dict(batch_size=32, seed=9)
    want = [as_numpy(b) for b in PretrainingLoader(shard_dirs["static"], **kw).iter_epoch(0)]
    mixed = PretrainingLoader(directory, **kw)
    assert_same_batches([as_numpy(b) for b in mixed.iter_epoch(0)], want)
    per_rank, read = run_ranks(directory, 0, 4, 2, **kw)
    assert_same_batches(global_from_ranks(per_rank, 4, 2), want)
    plain = run_ranks(shard_dirs["static"], 0, 4, 2, **kw)[1]
    assert all(a > b for a, b in zip(read, plain))  # the compressed shard is read whole, maybe several times


def test_start_skips_batches_unread(shard_dirs):
    kw = dict(batch_size=32, seed=4)
    full = PretrainingLoader(shard_dirs["dynamic"], **kw)
    everything = [[as_numpy(m) for m in micro] for micro in full.rank_batches(1, 2, 4, 2)]
    resumed = PretrainingLoader(shard_dirs["dynamic"], **kw)
    tail = [[as_numpy(m) for m in micro] for micro in resumed.rank_batches(1, 2, 4, 2, start=10)]
    assert len(tail) == len(everything) - 10
    for got, want in zip(tail, everything[10:]):
        assert_same_batches(got, want)
    lengths_bytes = 4 * sum(SIZES)
    assert resumed.bytes_read - lengths_bytes < 0.7 * (full.bytes_read - lengths_bytes)


def test_bad_splits_raise(shard_dirs):
    loader = PretrainingLoader(shard_dirs["static"], batch_size=32)
    for rank, world, accumulate in ((0, 3, 1), (0, 8, 8), (1, 4, 3)):
        with pytest.raises(BertkitError, match="not divisible"):
            next(loader.rank_batches(0, rank, world, accumulate))
    with pytest.raises(BertkitError, match="rank 4"):
        loader.rank_batches(0, 4, 4, 1)
    with pytest.raises(BertkitError, match="world_size=1"):
        PretrainingLoader(shard_dirs["static"], batch_size=32, rank=0, world_size=2).rank_batches(0, 0, 2, 1)


# ---- token-budget batches (--max-tokens) ----------------------------------------------------------
@pytest.mark.parametrize("world,accumulate", [(1, 1), (2, 2), (4, 1)])
def test_token_budget_batches_hold_every_row_once_within_the_budget(shard_dirs, world, accumulate):
    kw = dict(batch_size=32, seed=3, drop_last=False, max_tokens=900)
    one = PretrainingLoader(shard_dirs["static"], **kw)
    want = [as_numpy(b) for b in one.iter_epoch(0)]
    tokens = [int(b["valid_lengths"].sum()) for b in want]
    assert max(tokens[:-1]) <= 900 and min(tokens[:-1]) > 900 - int(one.max_seq_length or 128)  # full up to one row
    assert len({len(b["valid_lengths"]) for b in want}) > 1  # the row count varies with the lengths
    plan = list(one.batch_plan(0))
    pairs = [(int(s), int(r)) for b in plan for s, r in zip(b.shards, b.rows)]
    assert len(pairs) == len(set(pairs)) == sum(one.shard_sizes)  # every row once (nothing dropped: no drop_last)
    per_rank, _ = run_ranks(shard_dirs["static"], 0, world, accumulate, **kw)
    assert_same_batches(global_from_ranks(per_rank, world, accumulate), want)


def test_data_may_be_a_glob_pattern(shard_dirs, tmp_path):
    """GluonNLP's --data 'out/*.npz': the matching shards, with stats.json and vocab.txt beside them."""
    d = shard_dirs["static"]
    whole = PretrainingLoader(d, batch_size=32, seed=1)
    pattern = PretrainingLoader(str(d / "*.npz"), batch_size=32, seed=1)
    assert pattern.shards == whole.shards and pattern.data_dir == whole.data_dir
    assert_same_batches([as_numpy(b) for b in pattern.iter_epoch(0)], [as_numpy(b) for b in whole.iter_epoch(0)])
    some = PretrainingLoader(str(d / "shard-00000[01].npz"), batch_size=32, seed=1)
    assert [p.name for p in some.shards] == [p.name for p in whole.shards[:2]]
    with pytest.raises(BertkitError, match="no .npz shards match"):
        PretrainingLoader(str(tmp_path / "*.npz"), batch_size=32)


def test_a_shard_of_pickled_object_arrays_is_refused_in_one_line(tmp_path):
    """GluonNLP's pretraining .npz files hold ragged rows as object arrays; loading them would unpickle."""
    rows = np.empty(2, dtype=object)
    rows[0], rows[1] = np.arange(5), np.arange(7)
    np.savez(tmp_path / "part-000.npz", input_ids=rows, valid_lengths=np.array([5, 7]))
    with pytest.raises(BertkitError, match=r"part-000\.npz: array 'input_ids' holds pickled Python objects"):
        ShardFile(tmp_path / "part-000.npz")

