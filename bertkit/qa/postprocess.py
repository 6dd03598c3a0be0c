"""From window logits to answers: run_squad.py's n-best search, with two of its gaps closed.

For each question, every window proposes start/end pairs from the `n_best_size` highest start and
end logits of its context tokens: start <= end, at most `max_answer_length` tokens, and the start
token scored in its max-context window. (run_squad.py takes its top logits over the whole window,
question and padding included, and drops the non-context ones afterwards, so it may consider fewer.) Candidates are ranked by start + end logit, de-duplicated
by text, cut to `n_best_size`, and given softmax probabilities over that list.

SQuAD 2.0: each window's null score is its [CLS] start + end logit; the question's null score is
the minimum over its windows. `null_odds` = null score - best non-null score, and the prediction is
"" when null_odds > `threshold` (run_squad.py's `null_score_diff_threshold`). The null answer joins
the n-best list (and its probabilities) as "".

Gaps closed: when the top-n filter leaves no valid span (run_squad.py then crashes or answers the
literal "empty"), every valid span of every window is searched instead; and a question whose only
answer is null gets "" without error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import Features
from .squad_data import SquadExample


@dataclass
class Answer:
    text: str  # "" for no answer
    start: int | None  # character offsets into the context; None for no answer
    end: int | None
    probability: float  # of this answer in the n-best list
    null_odds: float | None  # SQuAD 2.0: null score - best non-null score
    best_span: tuple[str, int, int, float] | None  # the best non-null (text, start, end, probability)
    nbest: list[dict]


def _window_candidates(start_logits, end_logits, max_context, n_best_size, max_answer_length, exhaustive=False):
    """(start token, end token, start logit, end logit) of the valid spans of one window's context part."""
    n = len(start_logits)
    if exhaustive:
        starts, ends = np.arange(n), np.arange(n)
    else:
        starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
        ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    s, e = starts[:, None], ends[None, :]
    valid = (e >= s) & (e - s < max_answer_length) & max_context[s]
    si, ei = np.nonzero(valid)
    s_tok, e_tok = starts[si], ends[ei]
    return s_tok, e_tok, start_logits[s_tok], end_logits[e_tok]


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = np.exp(scores - scores.max())
    return z / z.sum()


def answer_example(example: SquadExample, context_spans: np.ndarray, windows: list[int], features: Features,
                   logits, n_best_size: int = 20, max_answer_length: int = 30, version_2: bool = False,
                   threshold: float = 0.0) -> Answer:
    """The answer to one question from the logits of its windows (`windows`: their feature indices)."""
    pools = []
    null_score, null_logits = None, None
    for exhaustive in (False, True):
        pools = []
        for f in windows:
            start, end = logits[f]
            c0, off = int(features.context_start[f]), int(features.doc_offset[f])
            n_ctx = len(features.max_context[f])
            if version_2 and not exhaustive:
                score = float(start[0] + end[0])
                if null_score is None or score < null_score:
                    null_score, null_logits = score, (float(start[0]), float(end[0]))
            s_tok, e_tok, s_log, e_log = _window_candidates(
                start[c0 : c0 + n_ctx], end[c0 : c0 + n_ctx], features.max_context[f], n_best_size,
                max_answer_length, exhaustive)
            if len(s_tok):
                pools.append((s_tok + off, e_tok + off, s_log, e_log))
        if pools:
            break
    s_tok, e_tok, s_log, e_log = (np.concatenate(p) for p in zip(*pools))
    order = np.argsort(-(s_log + e_log), kind="stable")

    nbest, seen = [], set()
    null_entry = None
    if version_2:
        null_entry = {"text": "", "start": None, "end": None, "start_logit": null_logits[0],
                      "end_logit": null_logits[1], "score": null_score}
    null_placed = has_span = False
    for k in order:
        # The list always keeps one non-null span (the best one), even when the null answer ranks
        # first and fills `n_best_size`: null_odds and a tuned threshold need it.
        if len(nbest) >= n_best_size and has_span:
            break
        score = float(s_log[k] + e_log[k])
        if null_entry is not None and not null_placed and null_score > score:
            nbest.append(null_entry)
            null_placed = True
            seen.add("")
            if len(nbest) >= n_best_size and has_span:
                break
        start, end = int(context_spans[s_tok[k], 0]), int(context_spans[e_tok[k], 1])
        text = example.context[start:end]
        if text in seen:
            continue
        seen.add(text)
        has_span = True
        nbest.append({"text": text, "start": start, "end": end, "start_logit": float(s_log[k]),
                      "end_logit": float(e_log[k]), "score": score})
    if null_entry is not None and not null_placed:
        nbest.append(null_entry)  # the null answer is always in the list, as in run_squad.py
    probs = _softmax(np.array([c["score"] for c in nbest]))
    for c, p in zip(nbest, probs):
        c["probability"] = float(p)

    best = next(c for c in nbest if c["text"])  # the exhaustive search guarantees one
    best_span = (best["text"], best["start"], best["end"], best["probability"])
    null_odds = None
    chosen = best
    if version_2:
        null_odds = null_score - best["score"]
        if null_odds > threshold:
            chosen = next(c for c in nbest if not c["text"])
    return Answer(chosen["text"], chosen["start"], chosen["end"], chosen["probability"], null_odds, best_span, nbest)


def answer_all(examples: list[SquadExample], features: Features, logits, **options) -> list[Answer]:
    """`answer_example` for every example, from all windows' logits."""
    by_example: list[list[int]] = [[] for _ in examples]
    for f, e in enumerate(features.example_index):
        by_example[int(e)].append(f)
    return [answer_example(ex, features.context_spans[e], by_example[e], features, logits, **options)
            for e, ex in enumerate(examples)]


def with_threshold(answers: list[Answer], threshold: float) -> list[str]:
    """The predicted texts again, with another SQuAD 2.0 null threshold."""
    return [a.best_span[0] if a.null_odds is None or a.null_odds <= threshold else "" for a in answers]
