"""Next-sentence pairs from tokenized documents, with the semantics of Google's
`create_pretraining_data.py` (`create_instances_from_document` and `truncate_seq_pair`).

For each document (and each of `dupe_factor` passes over the chunk):

- one target length is drawn per document, as Google does: `max_seq_length - 3`, or with
  probability `short_seq_prob` a uniform integer in [2, max_seq_length - 3];
- sentences are gathered into a chunk until it reaches the target (or the document ends); a random
  number of its leading sentences (at least one) form segment A;
- with probability 0.5, or always when the chunk holds a single sentence, B is "random": sentences
  from a random start in another document, until B reaches the target minus len(A); the chunk's
  sentences not used for A are put back and start the next chunk. Otherwise B is the rest of the
  chunk (label 0, "B really follows A");
- the pair is truncated to `max_seq_length - 3` tokens one token at a time from the longer segment
  (B on a tie), each time from the front or the back with equal probability.

The one change of scope: Google draws the "other document" from the whole corpus, which has to be in
memory. Here it comes from the same chunk of documents (a few MB of text, hundreds of Wikipedia
articles), as GluonNLP does per input file; that keeps memory bounded whatever the corpus size and
lets chunks be processed in parallel. If a chunk holds a single document, B comes from that same
document after ten tries, exactly as Google does for a one-document corpus.

Sentences are contiguous in a chunk's flat token array, so A and B are each a (start, end) span and
the padded (N, T) arrays are built with one vectorised gather.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass
class TokenizedChunk:
    """The documents of one chunk: all token ids in one flat array, sentences contiguous."""

    tokens: np.ndarray  # (total,) int32
    doc_bounds: list[list[int]]  # per document, the n_sentences + 1 sentence offsets into `tokens`

    @property
    def num_sentences(self) -> int:
        return sum(len(b) - 1 for b in self.doc_bounds)


@dataclass
class PairSpans:
    """Segment spans into a chunk's token array, one entry per instance."""

    a_start: np.ndarray
    a_end: np.ndarray
    b_start: np.ndarray
    b_end: np.ndarray
    is_random_next: np.ndarray  # bool
    forced_random: np.ndarray  # bool: the chunk held one sentence, so B had to be random (no coin flip)
    short_target: np.ndarray  # bool: the instance's document drew a short target length
    documents_drawn: int  # number of per-document target draws (documents x dupe_factor)
    short_targets_drawn: int

    def __len__(self) -> int:
        return len(self.a_start)


def target_length(rng: random.Random, max_num_tokens: int, short_seq_prob: float) -> tuple[int, bool]:
    """One document's target length, Google's draw: the maximum, or with probability `short_seq_prob`
    a uniform integer in [2, maximum]. Returns (target, whether it is short)."""
    if rng.random() < short_seq_prob:
        return rng.randint(2, max_num_tokens), True
    return max_num_tokens, False


def create_pairs(
    chunk: TokenizedChunk, max_seq_length: int, short_seq_prob: float, dupe_factor: int, rng: random.Random
) -> PairSpans:
    """Google's pairing loop over every document of the chunk, `dupe_factor` times."""
    max_num_tokens = max_seq_length - 3
    docs = chunk.doc_bounds
    n_docs = len(docs)
    a0s, a1s, b0s, b1s, rnd, forced, short = [], [], [], [], [], [], []
    uniform, randint = rng.random, rng.randint
    draws = short_draws = 0
    for _ in range(dupe_factor):
        for d, bounds in enumerate(docs):
            n = len(bounds) - 1
            target, is_short = target_length(rng, max_num_tokens, short_seq_prob)
            draws += 1
            short_draws += is_short
            chunk_start = 0
            i = 0
            while i < n:
                if i == n - 1 or bounds[i + 1] - bounds[chunk_start] >= target:
                    m = i - chunk_start + 1
                    a_end = chunk_start + (randint(1, m - 1) if m >= 2 else 1)
                    a0, a1 = bounds[chunk_start], bounds[a_end]
                    if m == 1 or uniform() < 0.5:
                        target_b = target - (a1 - a0)
                        for _try in range(10):
                            r = randint(0, n_docs - 1)
                            if r != d:
                                break
                        other = docs[r]
                        rs = randint(0, len(other) - 2)
                        j = rs + 1
                        while j < len(other) - 1 and other[j] - other[rs] < target_b:
                            j += 1
                        b0, b1 = other[rs], other[j]
                        rnd.append(True)
                        forced.append(m == 1)
                        i = a_end - 1  # put the unused sentences back
                    else:
                        b0, b1 = a1, bounds[i + 1]
                        rnd.append(False)
                        forced.append(False)
                    a0s.append(a0)
                    a1s.append(a1)
                    b0s.append(b0)
                    b1s.append(b1)
                    short.append(is_short)
                    chunk_start = i + 1
                i += 1
    as_int = lambda xs: np.asarray(xs, dtype=np.int64)  # noqa: E731
    return PairSpans(
        as_int(a0s), as_int(a1s), as_int(b0s), as_int(b1s),
        np.asarray(rnd, dtype=bool), np.asarray(forced, dtype=bool), np.asarray(short, dtype=bool),
        draws, short_draws,
    )


def create_segments(
    chunk: TokenizedChunk, max_seq_length: int, short_seq_prob: float, dupe_factor: int, rng: random.Random
) -> PairSpans:
    """Masked-LM-only instances (`--no-nsp`, as RoBERTa trains): each a single segment of whole,
    consecutive sentences of one document, gathered up to the target length exactly as `create_pairs`
    gathers a chunk (the same per-document target draw); B is empty and there is no label."""
    max_num_tokens = max_seq_length - 2
    a0s, a1s, short = [], [], []
    draws = short_draws = 0
    for _ in range(dupe_factor):
        for bounds in chunk.doc_bounds:
            n = len(bounds) - 1
            target, is_short = target_length(rng, max_num_tokens, short_seq_prob)
            draws += 1
            short_draws += is_short
            chunk_start = 0
            for i in range(n):
                if i == n - 1 or bounds[i + 1] - bounds[chunk_start] >= target:
                    a0s.append(bounds[chunk_start])
                    a1s.append(bounds[i + 1])
                    short.append(is_short)
                    chunk_start = i + 1
    a0, a1 = np.asarray(a0s, dtype=np.int64), np.asarray(a1s, dtype=np.int64)
    no = np.zeros(len(a0), dtype=bool)
    return PairSpans(a0, a1, a1.copy(), a1.copy(), no, no.copy(), np.asarray(short, dtype=bool), draws, short_draws)


def truncate_pairs(spans: PairSpans, max_num_tokens: int, rng: np.random.Generator) -> None:
    """Google's `truncate_seq_pair`, in closed form, applied to the spans in place.

    Removing one token at a time from the longer segment (B on a tie) first evens out the lengths,
    then alternates B, A, B, ...; so the number each segment loses follows from the lengths alone,
    and as each removal is from the front or the back with probability 0.5, the number taken from
    the front is Binomial(lost, 0.5).
    """
    la = spans.a_end - spans.a_start
    lb = spans.b_end - spans.b_start
    excess = np.maximum(la + lb - max_num_tokens, 0)
    diff = la - lb
    lose_a = np.where(diff > 0, np.minimum(excess, diff), 0)
    lose_b = np.where(diff < 0, np.minimum(excess, -diff), 0)
    rest = excess - lose_a - lose_b
    lose_b += (rest + 1) // 2
    lose_a += rest // 2
    front_a = rng.binomial(lose_a, 0.5)
    front_b = rng.binomial(lose_b, 0.5)
    spans.a_start += front_a
    spans.a_end -= lose_a - front_a
    spans.b_start += front_b
    spans.b_end -= lose_b - front_b


def assemble(
    tokens: np.ndarray, spans: PairSpans, max_seq_length: int, cls_id: int, sep_id: int, pairs: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`[CLS] A [SEP] B [SEP]` rows padded with 0: (input_ids, segment_ids, valid_lengths); with
    `pairs=False`, `[CLS] A [SEP]` rows (all segment 0) from spans whose B is empty."""
    la = (spans.a_end - spans.a_start)[:, None]
    lb = (spans.b_end - spans.b_start)[:, None]
    if not pairs:
        assert not lb.any(), "single segments have an empty B"
        t = np.arange(max_seq_length)[None, :]
        in_a = (t >= 1) & (t <= la)
        ids = np.where(in_a, tokens[np.where(in_a, spans.a_start[:, None] + t - 1, 0)], 0).astype(np.int32)
        ids[:, 0] = cls_id
        ids[np.arange(len(spans)), la[:, 0] + 1] = sep_id
        return ids, np.zeros_like(ids), (la[:, 0] + 2).astype(np.int32)
    length = la + lb + 3
    t = np.arange(max_seq_length)[None, :]
    in_a = (t >= 1) & (t <= la)
    in_b = (t >= la + 2) & (t < la + 2 + lb)
    index = np.where(in_a, spans.a_start[:, None] + t - 1, np.where(in_b, spans.b_start[:, None] + t - la - 2, 0))
    ids = np.where(in_a | in_b, tokens[index], 0).astype(np.int32)
    ids[:, 0] = cls_id
    rows = np.arange(len(spans))
    ids[rows, la[:, 0] + 1] = sep_id
    ids[rows, length[:, 0] - 1] = sep_id
    segment_ids = ((t >= la + 2) & (t < length)).astype(np.int32)
    return ids, segment_ids, length[:, 0].astype(np.int32)
