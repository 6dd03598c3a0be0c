"""Masked-LM masking, vectorised over a batch: one function for shards and for dynamic masking.

The rules are those of Google's `create_masked_lm_predictions`:

- candidates are all tokens except [CLS] and [SEP] (and padding, which Google's lists never hold);
- `num_to_predict = min(max_predictions, max(1, round(len(tokens) * masked_lm_prob)))`, where
  `len(tokens)` counts [CLS] and both [SEP] as Google does, and `round` is Python 3's (half to even);
- candidates are visited in random order and taken until `num_to_predict` are chosen; with whole-word
  masking a candidate is a whole word (a piece plus the `##` pieces that follow it), and a word that
  would overshoot `num_to_predict` is skipped, as Google does, so a word is never split;
- each chosen position becomes [MASK] with probability 0.8, a uniformly random vocabulary id with
  0.1, and stays as it is with 0.1; the label is always the original id.

One deliberate difference: Google glues a `##` piece to the previous candidate even across a [SEP]
(when segment B starts mid-word after truncation); here a piece right after [CLS]/[SEP] starts its
own word, so no "word" spans two segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BertkitError


@dataclass(frozen=True)
class MaskingVocab:
    """What masking needs to know about a vocabulary."""

    size: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    is_subword: np.ndarray  # (size,) bool: the token starts with "##" (continues a word)

    @classmethod
    def from_vocab(cls, vocab: dict[str, int], source: str = "vocabulary") -> "MaskingVocab":
        missing = [t for t in ("[CLS]", "[SEP]", "[MASK]") if t not in vocab]
        if missing:
            raise BertkitError(f"{source}: vocabulary lacks the special token(s) {', '.join(missing)}")
        size = max(vocab.values()) + 1
        is_subword = np.zeros(size, dtype=bool)
        for token, i in vocab.items():
            if token.startswith("##"):
                is_subword[i] = True
        return cls(size, vocab["[CLS]"], vocab["[SEP]"], vocab.get("[PAD]", 0), vocab["[MASK]"], is_subword)


@dataclass
class MaskedBatch:
    input_ids: np.ndarray  # (N, T) the ids with masking applied
    positions: np.ndarray  # (N, P) int32, ascending, 0 where unused
    labels: np.ndarray  # (N, P) int32, original ids, 0 where unused
    weights: np.ndarray  # (N, P) float32, 1.0 for a real prediction, 0.0 for padding


def num_to_predict(valid_lengths: np.ndarray, masked_lm_prob: float, max_predictions: int) -> np.ndarray:
    """Google's count of predictions for sequences of these lengths ([CLS]/[SEP] included)."""
    k = np.round(valid_lengths.astype(np.float64) * masked_lm_prob).astype(np.int64)
    return np.minimum(max_predictions, np.maximum(1, k))


def candidate_mask(input_ids: np.ndarray, valid_lengths: np.ndarray, vocab: MaskingVocab) -> np.ndarray:
    """(N, T) bool: positions that may be chosen for prediction."""
    t = np.arange(input_ids.shape[1])
    return (
        (t[None, :] < valid_lengths[:, None])
        & (input_ids != vocab.cls_id)
        & (input_ids != vocab.sep_id)
        & (input_ids != vocab.pad_id)
    )


def _choose_tokens(keys: np.ndarray, cand: np.ndarray, k: np.ndarray, max_predictions: int) -> np.ndarray:
    """Each row's k candidates with the smallest random keys (a uniformly random k-subset)."""
    n, t = keys.shape
    keys = np.where(cand, keys, 2.0)
    p = min(max_predictions, t)
    first = np.argpartition(keys, p - 1, axis=1)[:, :p] if p < t else np.tile(np.arange(t), (n, 1))
    first_keys = np.take_along_axis(keys, first, axis=1)
    order = np.argsort(first_keys, axis=1, kind="stable")
    first = np.take_along_axis(first, order, axis=1)
    first_keys = np.take_along_axis(first_keys, order, axis=1)
    take = (np.arange(first.shape[1])[None, :] < k[:, None]) & (first_keys < 2.0)
    chosen = np.zeros((n, t), dtype=bool)
    rows = np.nonzero(take)[0]
    chosen[rows, first[take]] = True
    return chosen


def _choose_whole_words(
    keys: np.ndarray, cand: np.ndarray, input_ids: np.ndarray, k: np.ndarray, vocab: MaskingVocab
) -> np.ndarray:
    """Google's whole-word selection: words in random order, skipping any that would overshoot k."""
    n, t = keys.shape
    prev_cand = np.zeros_like(cand)
    prev_cand[:, 1:] = cand[:, :-1]
    word_start = cand & ~(vocab.is_subword[input_ids] & prev_cand)
    word_id = np.cumsum(word_start, axis=1) - 1  # index of the word each candidate belongs to
    rows = np.broadcast_to(np.arange(n)[:, None], (n, t))
    flat = (rows * t + word_id)[cand]
    word_len = np.bincount(flat, minlength=n * t).reshape(n, t)  # word_len[r, w]
    word_keys = np.full((n, t), 2.0)
    word_keys[rows[word_start], word_id[word_start]] = keys[word_start]
    order = np.argsort(word_keys, axis=1, kind="stable")
    sorted_len = np.take_along_axis(word_len, order, axis=1)
    count = np.zeros(n, dtype=np.int64)
    take_sorted = np.zeros((n, t), dtype=bool)
    for c in range(int(word_start.sum(axis=1).max(initial=0))):
        length = sorted_len[:, c]
        take = (count < k) & (length > 0) & (count + length <= k)
        take_sorted[:, c] = take
        count += np.where(take, length, 0)
        if not ((count < k) & (length > 0)).any():
            break
    take_word = np.zeros((n, t), dtype=bool)
    np.put_along_axis(take_word, order, take_sorted, axis=1)
    return cand & np.take_along_axis(take_word, np.maximum(word_id, 0), axis=1)


def mask_tokens(
    input_ids: np.ndarray,
    valid_lengths: np.ndarray,
    vocab: MaskingVocab,
    rng: np.random.Generator,
    masked_lm_prob: float,
    max_predictions: int,
    whole_word: bool = False,
) -> MaskedBatch:
    """Choose and corrupt the masked-LM positions of a batch of unmasked sequences.

    `input_ids` (N, T) holds `[CLS] A [SEP] B [SEP]` padded after `valid_lengths`; it is not
    modified. The random draws are made for whole arrays, so a given `rng` state gives the same
    result however the rows were produced.
    """
    input_ids = np.asarray(input_ids)
    valid_lengths = np.asarray(valid_lengths)
    n, t = input_ids.shape
    k = num_to_predict(valid_lengths, masked_lm_prob, max_predictions)
    cand = candidate_mask(input_ids, valid_lengths, vocab)
    keys = rng.random((n, t))
    if whole_word:
        chosen = _choose_whole_words(keys, cand, input_ids, k, vocab)
    else:
        chosen = _choose_tokens(keys, cand, k, max_predictions)

    # Scatter the chosen positions (ascending, as Google sorts them) into (N, P).
    rows, cols = np.nonzero(chosen)
    slot = (np.cumsum(chosen, axis=1) - 1)[rows, cols]
    positions = np.zeros((n, max_predictions), dtype=np.int32)
    positions[rows, slot] = cols
    labels = np.zeros((n, max_predictions), dtype=np.int32)
    labels[rows, slot] = input_ids[rows, cols]
    weights = np.zeros((n, max_predictions), dtype=np.float32)
    weights[rows, slot] = 1.0

    # 80% [MASK], 10% a random id, 10% unchanged.
    action = rng.random((n, max_predictions))
    random_ids = rng.integers(0, vocab.size, size=(n, max_predictions))
    new_ids = np.where(action < 0.8, vocab.mask_id, np.where(action < 0.9, labels, random_ids))
    masked = input_ids.copy()
    masked[rows, cols] = new_ids[rows, slot]
    return MaskedBatch(masked, positions, labels, weights)
