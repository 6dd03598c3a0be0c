"""Sentences of words as a token classifier's inputs: windows of WordPieces, first-piece positions, targets.

Each word is tagged on its first WordPiece; its other pieces, [CLS] and [SEP] get the target -100
(`IGNORE`), which the cross-entropy ignores (the BERT paper's recipe). A sentence longer than
`max_len` is cut into overlapping windows (windows.py), each word trained and predicted in exactly
one of them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..batches import pad_rows
from .windows import plan_windows
from .words import word_pieces

IGNORE = -100  # the target of pieces that are not a word's first piece (cross_entropy's ignore_index)


class TaggedWindows:
    """Sentences of words as model inputs: one row per window, with the position of the first
    piece of each word the window owns, and (for training) those words' label ids."""

    def __init__(self, tokenizer, sentences: Sequence[Sequence[str]], label_ids: Sequence[Sequence[int]] | None, max_len: int):
        capacity = max_len - 2
        pieces = word_pieces(tokenizer, [w for words in sentences for w in words])
        self.n_words = [len(words) for words in sentences]
        self.ids: list[list[int]] = []
        self.sentence: list[int] = []  # the sentence of each window
        self.words: list[np.ndarray] = []  # the words each window owns (indices into its sentence)
        self.positions: list[np.ndarray] = []  # ... and their first pieces' positions in the window
        self.targets: list[np.ndarray] = []
        self.split = 0  # sentences that needed more than one window
        k = 0
        for s, n in enumerate(self.n_words):
            sp = pieces[k : k + n]
            k += n
            windows = plan_windows([len(p) for p in sp], capacity)
            self.split += len(windows) > 1
            for win in windows:
                if not win.owned:
                    continue
                ids, first = [tokenizer.cls_id], {}
                for w in range(win.start, win.end):
                    first[w] = len(ids)
                    ids.extend(sp[w][:capacity])
                ids.append(tokenizer.sep_id)
                self.ids.append(ids)
                self.sentence.append(s)
                self.words.append(np.array(win.owned, dtype=np.int64))
                self.positions.append(np.array([first[w] for w in win.owned], dtype=np.int64))
                if label_ids is not None:
                    self.targets.append(np.asarray(label_ids[s], dtype=np.int64)[win.owned])
        self.lengths = np.array([len(i) for i in self.ids], dtype=np.int64)
        self.pad_id = tokenizer.pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows):
        """(input ids, segment ids, valid lengths, targets (B, T) with -100 off the owned first pieces)."""
        ids = pad_rows([self.ids[i] for i in rows], self.pad_id)
        targets = np.full(ids.shape, IGNORE, dtype=np.int64)
        if self.targets:
            for r, i in enumerate(rows):
                targets[r, self.positions[i]] = self.targets[i]
        ids = torch.from_numpy(ids)
        return ids, torch.zeros_like(ids), torch.from_numpy(self.lengths[rows]), torch.from_numpy(targets)
