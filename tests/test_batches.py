"""Batch plans (bertkit/batches.py): every example once per epoch, seeds reproduce, the padding they promise."""

import numpy as np
import pytest

from bertkit.batches import random_batches, sorted_batches, split_rows, token_budget_batches
from bertkit.train.finetune import FinetuneConfig


def test_bucket_batches_cover_everything_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 100, size=1000)
    batches = random_batches(lengths, 16, np.random.default_rng(1), bucket=10)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    assert spread < 15  # random batches of 16 from 5..99 would spread ~80
    again = random_batches(lengths, 16, np.random.default_rng(1), bucket=10)
    assert all((a == b).all() for a, b in zip(batches, again))  # seeded: reproducible


def test_default_batches_are_random_slices_of_one_permutation():
    """Issue 18: length-sorted batches were batches of similar texts and scored lower; the default
    batch is a slice of a shuffled order, whatever the lengths."""
    assert FinetuneConfig().bucket_batches == 1
    lengths = np.random.default_rng(0).integers(5, 100, size=1000)
    batches = random_batches(lengths, 32, np.random.default_rng(7), FinetuneConfig().bucket_batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))  # every example once per epoch
    order = np.random.default_rng(7).permutation(1000)
    slices = {frozenset(order[i:i + 32].tolist()) for i in range(0, 1000, 32)}
    assert {frozenset(b.tolist()) for b in batches} == slices
    assert sorted(len(b) for b in batches)[0] == 1000 % 32  # one short batch, the rest full
    other = random_batches(lengths, 32, np.random.default_rng(8), 1)
    assert {frozenset(b.tolist()) for b in other} != slices  # another seed, other batches


def test_larger_length_groups_pad_less():
    """What --bucket-batches N buys: the padded share of the batch grid falls as N grows."""
    lengths = np.random.default_rng(0).integers(5, 100, size=3200)

    def padding(n):
        batches = random_batches(lengths, 32, np.random.default_rng(1), n)
        return 1 - sum(lengths[b].sum() for b in batches) / sum(len(b) * lengths[b].max() for b in batches)

    shares = [padding(n) for n in (1, 4, 50)]
    assert shares[0] > 0.4 and shares[0] > shares[1] > shares[2] and shares[2] < 0.05


def test_token_budget_batches_hold_every_row_once_within_the_budget():
    lengths = np.random.default_rng(0).integers(5, 100, size=1000)
    batches = token_budget_batches(lengths, 600, np.random.default_rng(3))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    sizes = [int(lengths[b].sum()) for b in batches]
    assert max(sizes) <= 600
    # greedy: a batch closes only when the next row would not fit
    order = np.concatenate(batches)
    for b, nxt in zip(batches, batches[1:]):
        assert lengths[b].sum() + lengths[nxt[0]] > 600
    assert (order == np.random.default_rng(3).permutation(1000)).all()  # random order, not sorted by length
    again = token_budget_batches(lengths, 600, np.random.default_rng(3))
    assert all((a == b).all() for a, b in zip(batches, again))


def test_token_budget_batches_keep_work_per_step_even():
    """What --max-tokens buys: real tokens per batch vary far less than with fixed row counts."""
    lengths = np.random.default_rng(1).integers(5, 120, size=4000)
    budget = token_budget_batches(lengths, 32 * int(lengths.mean()), np.random.default_rng(0))
    rows = random_batches(lengths, 32, np.random.default_rng(0))
    spread = lambda bs: np.std([lengths[b].sum() for b in bs[:-1]]) / np.mean([lengths[b].sum() for b in bs[:-1]])  # noqa: E731
    assert spread(budget) < 0.05 < spread(rows)


def test_sorted_batches_sort_by_length():
    lengths = np.array([5, 1, 4, 2, 3])
    assert [b.tolist() for b in sorted_batches(lengths, 2)] == [[1, 3], [4, 2], [0]]


@pytest.mark.parametrize("world,accumulate", [(1, 1), (2, 1), (2, 2), (4, 3)])
def test_split_rows_deals_a_global_batch_out_in_order(world, accumulate):
    rows = np.arange(37)
    parts = [split_rows(rows, r, world, accumulate) for r in range(world)]
    # micro-batch m of rank r is part m * world + r: concatenated in that order, the batch itself
    joined = np.concatenate([parts[r][m] for m in range(accumulate) for r in range(world)])
    assert joined.tolist() == rows.tolist()
    sizes = [len(p) for ranks in parts for p in ranks]
    assert max(sizes) - min(sizes) <= 1


def test_split_rows_gives_empty_parts_when_the_batch_is_small():
    parts = [split_rows(np.arange(3), r, 4, 1)[0] for r in range(4)]
    assert [len(p) for p in parts] == [1, 1, 1, 0]
