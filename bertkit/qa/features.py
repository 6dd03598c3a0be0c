"""SQuAD features as Google's run_squad.py defines them, on character offsets.

A feature ("window") is `[CLS] question [SEP] context piece [SEP]`: the question cut to
`max_query_length` tokens, the context cut into windows of at most
`max_seq_length - len(question) - 3` tokens that start `doc_stride` tokens apart (the last one ends
at the context's end). A context token seen by several windows is scored only in the window where
it has the most context on both sides: score min(left, right) + 0.01 * window length, the first
window winning ties, exactly as run_squad.py's `_check_is_max_context`.

Where run_squad.py maps answers through whitespace words and re-tokenizes to find the span
(`_improve_answer_span`), here the tokenizer's character offsets into the original context do it:
the answer's tokens are those overlapping its characters, and any text the model predicts is cut
from the original context between a start token's first character and an end token's last, so it
keeps the context's case, accents and spacing.

Training targets: a window holding the whole answer targets its start and end tokens; one that
does not is dropped for SQuAD 1.1 and targets [CLS] (position 0) for SQuAD 2.0, as are all
windows of an unanswerable question.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..batches import pad_rows
from ..errors import BertkitError
from ..tokenizer import TruncationWarning
from .squad_data import SquadDataWarning, SquadExample

_NO_TRUNCATION = 1 << 30  # encode_batch always truncates to some length; this one never bites


@dataclass
class Features:
    """The windows of a list of examples, in example order, ready to batch."""

    input_ids: list[np.ndarray]  # each (length,) int64: [CLS] q [SEP] ctx [SEP]
    segment_ids: list[np.ndarray]
    lengths: np.ndarray  # (F,) tokens per window
    example_index: np.ndarray  # (F,) the example each window belongs to
    context_start: np.ndarray  # (F,) window position of its first context token
    doc_offset: np.ndarray  # (F,) index of that token among the example's context tokens
    max_context: list[np.ndarray]  # each (context tokens in the window,) bool
    context_spans: list[np.ndarray]  # per example: (context tokens, 2) character [start, end) of each token
    start_positions: np.ndarray | None = None  # (F,) training targets (window positions)
    end_positions: np.ndarray | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # training: reason -> examples left out

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, rows):
        """(input_ids, segment_ids, valid_lengths) as padded (B, T) tensors for `rows`, padded with 0."""
        import torch

        lengths = self.lengths[rows]
        ids = pad_rows([self.input_ids[i] for i in rows])
        segs = pad_rows([self.segment_ids[i] for i in rows])
        return torch.from_numpy(ids), torch.from_numpy(segs), torch.from_numpy(lengths.astype(np.int64))


def window_starts(n_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over `n_tokens` context tokens, as run_squad.py cuts them."""
    spans, start = [], 0
    while start < n_tokens:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length == n_tokens:
            break
        start += min(length, doc_stride)
    return spans


def max_context_flags(spans: list[tuple[int, int]], n_tokens: int) -> list[np.ndarray]:
    """For each window, whether each of its tokens has its maximal context there (first window wins ties)."""
    positions = np.arange(n_tokens)
    scores = np.full((len(spans), n_tokens), -np.inf)
    for w, (start, length) in enumerate(spans):
        inside = slice(start, start + length)
        p = positions[inside]
        scores[w, inside] = np.minimum(p - start, start + length - 1 - p) + 0.01 * length
    best = scores.argmax(axis=0)  # argmax returns the first maximum, as run_squad's strict ">" does
    return [best[start : start + length] == w for w, (start, length) in enumerate(spans)]


def answer_token_span(spans: np.ndarray, char_start: int, char_end: int) -> tuple[int, int] | None:
    """First and last context token overlapping characters [char_start, char_end); None if no token does."""
    if len(spans) == 0 or char_end <= char_start:
        return None
    first = int(np.searchsorted(spans[:, 1], char_start, side="right"))  # first token ending after the start
    last = int(np.searchsorted(spans[:, 0], char_end, side="left")) - 1  # last token starting before the end
    if first >= len(spans) or last < first:
        return None
    return first, last


def span_text(context: str, spans: np.ndarray, first: int, last: int) -> tuple[str, int, int]:
    """The original context's text from token `first`'s first character to token `last`'s last."""
    start, end = int(spans[first, 0]), int(spans[last, 1])
    return context[start:end], start, end


def _tokenize(tokenizer, texts: list[str]):
    """Ids and character offsets of each text, without [CLS]/[SEP]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        encodings = tokenizer.encode_batch(texts, max_len=_NO_TRUNCATION)
    return [(e.ids[1:-1], np.asarray(e.offsets[1:-1], dtype=np.int64).reshape(-1, 2)) for e in encodings]


def make_features(examples: list[SquadExample], tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                  max_query_length: int = 64, training: bool = False, version_2: bool = False) -> Features:
    """All windows of `examples`; with `training`, their start/end targets (see the module docstring)."""
    if doc_stride < 1:
        raise BertkitError(f"--doc-stride must be at least 1, got {doc_stride}")
    if max_query_length < 1:
        raise BertkitError(f"--max-query-length must be at least 1, got {max_query_length}")
    # Contexts are shared by the questions of a paragraph: tokenize each once.
    unique_contexts = list(dict.fromkeys(ex.context for ex in examples))
    context_tokens = dict(zip(unique_contexts, _tokenize(tokenizer, unique_contexts)))
    questions = _tokenize(tokenizer, [ex.question for ex in examples])
    cls_id, sep_id = tokenizer.cls_id, tokenizer.sep_id

    out = Features([], [], np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), [], [])
    lengths, example_index, context_start, doc_offset, starts, ends = [], [], [], [], [], []
    skipped: dict[str, int] = {}
    for e, ex in enumerate(examples):
        doc_ids, doc_spans = context_tokens[ex.context]
        if not doc_ids:
            raise BertkitError(f"{ex.where} (id {ex.qid}): the context has no tokens after normalisation")
        query_ids = questions[e][0][:max_query_length]
        max_tokens = max_seq_length - len(query_ids) - 3
        if max_tokens < 1:
            raise BertkitError(
                f"--max-seq-length {max_seq_length} is too small: question {ex.qid!r} takes {len(query_ids)} tokens "
                f"(after --max-query-length {max_query_length}) plus [CLS] and two [SEP], leaving no room for context"
            )
        answer = None
        if training and not ex.is_impossible:
            text, char_start = ex.answers[0]
            answer = answer_token_span(doc_spans, char_start, char_start + len(text))
            if answer is None:
                skipped["the answer covers no context token"] = skipped.get("the answer covers no context token", 0) + 1
                out.context_spans.append(doc_spans)
                continue
        windows = window_starts(len(doc_ids), max_tokens, doc_stride)
        flags = max_context_flags(windows, len(doc_ids))
        prefix = [cls_id, *query_ids, sep_id]
        kept = 0
        for (start, length), is_max in zip(windows, flags):
            target = (0, 0)
            if answer is not None:
                inside = start <= answer[0] and answer[1] < start + length
                if inside:
                    target = (answer[0] - start + len(prefix), answer[1] - start + len(prefix))
                elif not version_2:
                    continue  # SQuAD 1.1: a window without the answer teaches nothing, as GluonNLP does
            ids = np.asarray(prefix + doc_ids[start : start + length] + [sep_id], dtype=np.int64)
            segs = np.zeros(len(ids), dtype=np.int64)
            segs[len(prefix):] = 1
            out.input_ids.append(ids)
            out.segment_ids.append(segs)
            out.max_context.append(is_max)
            lengths.append(len(ids))
            example_index.append(e)
            context_start.append(len(prefix))
            doc_offset.append(start)
            starts.append(target[0])
            ends.append(target[1])
            kept += 1
        if training and kept == 0:
            skipped["the answer is longer than a window"] = skipped.get("the answer is longer than a window", 0) + 1
        out.context_spans.append(doc_spans)
    out.lengths = np.asarray(lengths, dtype=np.int64)
    out.example_index = np.asarray(example_index, dtype=np.int64)
    out.context_start = np.asarray(context_start, dtype=np.int64)
    out.doc_offset = np.asarray(doc_offset, dtype=np.int64)
    if training:
        out.start_positions = np.asarray(starts, dtype=np.int64)
        out.end_positions = np.asarray(ends, dtype=np.int64)
    out.skipped = skipped
    for reason, n in skipped.items():
        warnings.warn(f"{n} training question(s) left out: {reason}", SquadDataWarning, stacklevel=2)
    return out
