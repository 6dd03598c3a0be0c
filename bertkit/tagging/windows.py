"""Long sentences cut into overlapping windows of words, so that nothing is truncated.

A sentence whose pieces fit in `capacity` (`max_len` minus [CLS] and [SEP]) is one window. A longer
one is covered by windows of whole words, each as long as fits, each starting about half a window
before the previous one ended. Every word is then *owned* by exactly one window, the one where it
has the most context on its shorter side (the "max context" rule of BERT's SQuAD code): that
window trains on it and predicts it. A word longer than a whole window keeps only its first
`capacity` pieces (only its first piece is ever tagged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass
class Window:
    start: int  # first word
    end: int  # last word + 1
    owned: list[int]  # the words this window tags


def plan_windows(piece_counts: Sequence[int], capacity: int) -> list[Window]:
    """Windows over one sentence's words, given each word's number of pieces."""
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    counts = [min(max(c, 1), capacity) for c in piece_counts]
    n = len(counts)
    if sum(counts) <= capacity:
        return [Window(0, n, list(range(n)))]
    spans = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and used + counts[end] <= capacity:
            used += counts[end]
            end += 1
        spans.append((start, end))
        if end == n:
            break
        # The next window starts far enough back to share about half a window with this one.
        nxt, back = end, 0
        while nxt - 1 > start and back + counts[nxt - 1] <= capacity // 2:
            nxt -= 1
            back += counts[nxt]
        start = nxt
    owner = [-1] * n
    best = [-1.0] * n
    for w, (a, b) in enumerate(spans):
        left = 0
        total = sum(counts[a:b])
        for i in range(a, b):
            context = min(left, total - left - counts[i]) + 0.01 * (b - a)
            if context > best[i]:
                best[i], owner[i] = context, w
            left += counts[i]
    return [Window(a, b, [i for i in range(a, b) if owner[i] == w]) for w, (a, b) in enumerate(spans)]
