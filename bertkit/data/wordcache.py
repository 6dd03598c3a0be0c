"""WordPiece ids for many sentences at once, through a bounded cache of space-separated words.

Natural text repeats its words (Zipf), so tokenizing each distinct word once and reusing its ids is
several times faster than running the tokenizer over every sentence, and it gives exactly the same
ids: BERT's basic tokenizer splits on whitespace before anything else, and its normalisation
(cleaning, lower-casing, accent stripping, spacing around CJK characters) works character by
character, so the pieces of `"a b"` are the pieces of `"a"` followed by those of `"b"`. Only the
ASCII space is used to split here; every other character, whitespace or not, is left to the real
tokenizer inside the word. (`tests/test_instances.py` checks the equality on real text.)

The cache is cleared when it reaches `max_words` entries, so memory stays bounded on any corpus.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np


class WordCacheTokenizer:
    def __init__(self, tokenizer, max_words: int = 300_000):
        self.tokenizer = tokenizer  # a bertkit BertTokenizer (anything with tokenize_batch)
        self.max_words = max_words
        self.cache: dict[str, tuple[int, ...]] = {}

    def _fill(self, words: list[str]) -> None:
        cache = self.cache
        missing = list(dict.fromkeys(w for w in words if w not in cache))
        if len(cache) + len(missing) > self.max_words:
            cache.clear()
            missing = list(dict.fromkeys(words))
        if missing:
            cache.update(zip(missing, map(tuple, self.tokenizer.tokenize_batch(missing))))

    def tokenize_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (int32) and each text's number of ids (int64)."""
        if not texts:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        words_per_text = [t.split(" ") for t in texts]  # never empty: "".split(" ") == [""]
        words = list(itertools.chain.from_iterable(words_per_text))
        self._fill(words)
        pieces = list(map(self.cache.__getitem__, words))
        piece_ends = np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
        flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=int(piece_ends[-1]))
        word_ends = np.cumsum(np.fromiter(map(len, words_per_text), dtype=np.int64, count=len(texts)))
        lengths = np.diff(piece_ends[word_ends - 1], prepend=0)
        return flat, lengths

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Same as `BertTokenizer.tokenize_batch`."""
        flat, lengths = self.tokenize_flat(texts)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        flat_list = flat.tolist()
        return [flat_list[bounds[i] : bounds[i + 1]] for i in range(len(texts))]
