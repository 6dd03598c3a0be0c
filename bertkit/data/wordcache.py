"""WordPiece ids for many sentences at once, through a bounded cache of space-separated words.

Natural text repeats its words (Zipf), so tokenizing each distinct word once and reusing its ids is
several times faster than running the tokenizer over every sentence, and it gives exactly the same
ids: BERT's basic tokenizer splits on whitespace before anything else, and its normalisation
(cleaning, lower-casing, accent stripping, spacing around CJK characters) works character by
character, so the pieces of `"a b"` are the pieces of `"a"` followed by those of `"b"`. Only the
ASCII space is used to split here; every other character, whitespace or not, is left to the real
tokenizer inside the word. (`tests/test_corpus.py` checks the equality on real text.)

New words are sent to the tokenizer a few hundred at a time, joined by a separator: a punctuation
character that is a token of its own in the vocabulary (`|` in BERT's). BERT always splits
punctuation into a token of its own, so the separator's id marks the word boundaries in the output,
and the tokenizer's fixed cost per text is paid once per few hundred words, not once per word.
Words that contain the separator character are tokenized one by one.

Lookups are vectorised: a word maps to a slot; each slot's ids live in one flat array. The cache is
cleared when it reaches `max_words` entries, so memory stays bounded on any corpus.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

_SEPARATOR_CANDIDATES = "|~^#$%&*+=<>@\\/;:!?.,"
_WORDS_PER_TEXT = 256


class WordCacheTokenizer:
    def __init__(self, tokenizer, max_words: int = 300_000):
        self.tokenizer = tokenizer  # a bertkit BertTokenizer (tokenize_batch, vocab)
        self.max_words = max_words
        vocab = getattr(tokenizer, "vocab", {})
        self.separator = next((c for c in _SEPARATOR_CANDIDATES if c in vocab), None)
        self.separator_id = vocab[self.separator] if self.separator else None
        self.clear()

    def clear(self) -> None:
        self.slot: dict[str, int] = {}
        self.table = np.zeros(0, dtype=np.int32)  # the ids of all cached words (and separators)
        self.starts = np.zeros(0, dtype=np.int64)  # per slot: where its ids start in `table`
        self.lengths = np.zeros(0, dtype=np.int64)  # per slot: how many ids

    def _add(self, words: list[str]) -> None:
        """Tokenize new words and give each a slot."""
        sep = self.separator
        joined = [w for w in words if sep is not None and sep not in w]
        alone = [w for w in words if sep is None or sep in w]
        texts = [f" {sep} ".join(joined[i : i + _WORDS_PER_TEXT]) for i in range(0, len(joined), _WORDS_PER_TEXT)]
        out = self.tokenizer.tokenize_batch(texts + alone)
        if joined:
            # each text + one more separator: then every word ends right before a separator
            ids = np.fromiter(
                itertools.chain.from_iterable(itertools.chain(t, (self.separator_id,)) for t in out[: len(texts)]),
                dtype=np.int32,
            )
            ends = np.flatnonzero(ids == self.separator_id)
            assert len(ends) == len(joined), "separator inside a word's pieces"
            starts = np.concatenate([[0], ends[:-1] + 1])
            new_starts, new_lengths = [starts], [ends - starts]
        else:
            ids = np.zeros(0, dtype=np.int32)
            new_starts, new_lengths = [], []
        for piece in out[len(texts) :]:
            new_starts.append(np.array([len(ids)]))
            new_lengths.append(np.array([len(piece)]))
            ids = np.concatenate([ids, np.asarray(piece, dtype=np.int32)])
        base = len(self.table)
        self.table = np.concatenate([self.table, ids])
        self.starts = np.concatenate([self.starts, *(s + base for s in new_starts)])
        self.lengths = np.concatenate([self.lengths, *new_lengths])
        first = len(self.slot)
        self.slot.update(zip(joined + alone, range(first, first + len(words))))

    def tokenize_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (int32) and each text's number of ids (int64)."""
        if not texts:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        words_per_text = [t.split(" ") for t in texts]  # never empty: "".split(" ") == [""]
        words = list(itertools.chain.from_iterable(words_per_text))
        new = set(words).difference(self.slot)
        if new:
            if len(self.slot) + len(new) > self.max_words:
                self.clear()
                new = set(words)
            self._add(sorted(new))  # sorted: the same texts go to the tokenizer on every run
        slots = np.fromiter(map(self.slot.__getitem__, words), dtype=np.int64, count=len(words))
        lengths = self.lengths[slots]
        ends = np.cumsum(lengths)
        total = int(ends[-1])
        # ids of word k are table[starts[k] : starts[k] + lengths[k]], laid out one after the other
        flat = self.table[np.repeat(self.starts[slots] - (ends - lengths), lengths) + np.arange(total)]
        word_ends = np.cumsum(np.fromiter(map(len, words_per_text), dtype=np.int64, count=len(texts)))
        text_lengths = np.diff(ends[word_ends - 1], prepend=0)
        return flat, text_lengths

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Same as `BertTokenizer.tokenize_batch`."""
        flat, lengths = self.tokenize_flat(texts)
        bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        flat_list = flat.tolist()
        return [flat_list[bounds[i] : bounds[i + 1]] for i in range(len(texts))]
