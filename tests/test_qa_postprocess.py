"""n-best spans, probabilities and the SQuAD 2.0 null threshold, on hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit.qa.features import make_features
from bertkit.qa.postprocess import answer_all, answer_example, with_threshold
from bertkit.qa.squad_data import SquadExample

CONTEXT = "The quick brown fox jumps over the lazy dog near the river bank today."


@pytest.fixture(scope="module")
def tokenizer(minilm):
    return minilm.tokenizer


def _logits(features, picks, base=-5.0):
    """Logits for each window: `picks[f]` = {"start": {pos: value}, "end": {pos: value}}, else `base`."""
    out = []
    for f in range(len(features)):
        start = np.full(features.lengths[f], base, dtype=np.float32)
        end = np.full(features.lengths[f], base, dtype=np.float32)
        for pos, v in picks.get(f, {}).get("start", {}).items():
            start[pos] = v
        for pos, v in picks.get(f, {}).get("end", {}).items():
            end[pos] = v
        out.append((start, end))
    return out


def _token_pos(features, f, word):
    """Window position of the context token that starts at `word`'s first occurrence."""
    char = CONTEXT.index(word)
    spans = features.context_spans[features.example_index[f]]
    doc = int(np.nonzero(spans[:, 0] == char)[0][0])
    return doc - features.doc_offset[f] + features.context_start[f]


def test_best_span_probabilities_and_text(tokenizer):
    ex = SquadExample("1", "What jumps?", CONTEXT, [])
    f = make_features([ex], tokenizer)
    s, e = _token_pos(f, 0, "quick"), _token_pos(f, 0, "fox")
    logits = _logits(f, {0: {"start": {s: 5.0, 1: 9.0}, "end": {e: 5.0, 0: 9.0, 2: 9.0}}})
    a = answer_all([ex], f, logits)[0]
    # positions 0-2 are [CLS] and the question: never part of an answer, however high their logits
    assert a.text == "quick brown fox" and CONTEXT[a.start : a.end] == a.text
    assert a.nbest[0]["text"] == a.text
    assert sum(c["probability"] for c in a.nbest) == pytest.approx(1.0)
    assert all(c["text"] for c in a.nbest) and len({c["text"] for c in a.nbest}) == len(a.nbest)  # de-duplicated
    assert a.probability == a.nbest[0]["probability"] and a.null_odds is None


def test_constraints_end_before_start_and_max_length(tokenizer):
    ex = SquadExample("1", "What?", CONTEXT, [])
    f = make_features([ex], tokenizer)
    quick, dog, today = _token_pos(f, 0, "quick"), _token_pos(f, 0, "dog"), _token_pos(f, 0, "today")
    # best pair by score would be end before start; next best is too long for max_answer_length=3
    logits = _logits(f, {0: {"start": {dog: 10.0, quick: 8.0}, "end": {quick: 10.0, today: 9.0}}})
    a = answer_example(ex, f.context_spans[0], [0], f, logits, max_answer_length=3)
    assert a.text not in ("", "quick brown fox jumps over the lazy dog near the river bank today")
    spans = f.context_spans[0]
    n_tokens = np.searchsorted(spans[:, 0], a.end, side="left") - np.searchsorted(spans[:, 0], a.start, side="left")
    assert n_tokens <= 3
    b = answer_example(ex, f.context_spans[0], [0], f, logits, max_answer_length=30)
    assert b.text == "dog near the river bank today"


def test_no_valid_span_in_the_top_n_does_not_crash(tokenizer):
    """Every top start comes after every top end: run_squad.py finds no candidate (and crashes on
    SQuAD 2.0); here the full search finds the best valid span instead."""
    ex = SquadExample("1", "What?", CONTEXT, [])
    f = make_features([ex], tokenizer)
    c0, n = f.context_start[0], len(f.max_context[0])
    starts = {c0 + n - 1 - k: 10.0 - k * 0.1 for k in range(3)}  # the last three tokens
    ends = {c0 + k: 10.0 - k * 0.1 for k in range(3)}  # the first three
    logits = _logits(f, {0: {"start": starts, "end": ends}})
    for v2 in (False, True):
        a = answer_example(ex, f.context_spans[0], [0], f, logits, n_best_size=3, version_2=v2, threshold=100.0)
        assert a.text and a.best_span[0] == a.text


def test_v2_null_is_the_minimum_over_windows_and_the_threshold_decides(tokenizer):
    long_context = " ".join([CONTEXT] * 12)
    ex = SquadExample("1", "What?", long_context, [])
    f = make_features([ex], tokenizer, max_seq_length=64, doc_stride=16)
    assert len(f) >= 3
    picks = {w: {"start": {0: 4.0 + w}, "end": {0: 4.0 + w}} for w in range(len(f))}  # null scores 8, 10, 12, ...
    s = f.context_start[1] + int(np.nonzero(f.max_context[1])[0][0])  # a token window 1 scores
    picks[1]["start"][s], picks[1]["end"][s] = 3.0, 3.5  # best span score 6.5 in window 1
    logits = _logits(f, picks)
    options = dict(version_2=True, n_best_size=5)
    a = answer_example(ex, f.context_spans[0], list(range(len(f))), f, logits, threshold=0.0, **options)
    assert a.null_odds == pytest.approx(8.0 - 6.5)  # min over windows of the [CLS] scores, minus the best span
    assert a.text == "" and a.start is None
    assert a.nbest[0]["text"] == "" and a.nbest[1]["text"] == a.best_span[0]
    b = answer_example(ex, f.context_spans[0], list(range(len(f))), f, logits, threshold=2.0, **options)
    assert b.text == a.best_span[0] != ""
    assert with_threshold([a], 2.0) == [b.text] and with_threshold([a], 1.0) == [""]


def test_only_null_candidates_give_empty_answer(tokenizer):
    """A SQuAD 2.0 question whose null score beats every span by far: "", no error, odds finite."""
    ex = SquadExample("1", "What?", CONTEXT, [])
    f = make_features([ex], tokenizer)
    logits = _logits(f, {0: {"start": {0: 50.0}, "end": {0: 50.0}}}, base=-50.0)
    a = answer_example(ex, f.context_spans[0], [0], f, logits, version_2=True)
    assert a.text == "" and np.isfinite(a.null_odds) and a.null_odds > 100
    assert a.probability == pytest.approx(1.0, abs=1e-6)


def test_n_best_size_one_with_null_first_keeps_the_best_span(tokenizer):
    """n_best_size 1 and a null answer that outranks every span: "" is predicted, and the best span
    is still known (its null odds, and what a higher threshold would answer)."""
    ex = SquadExample("1", "What?", CONTEXT, [])
    f = make_features([ex], tokenizer)
    s = _token_pos(f, 0, "fox")
    logits = _logits(f, {0: {"start": {0: 9.0, s: 3.0}, "end": {0: 9.0, s: 3.0}}})
    a = answer_example(ex, f.context_spans[0], [0], f, logits, version_2=True, n_best_size=1)
    assert a.text == "" and a.best_span[0] == "fox"
    assert a.null_odds == pytest.approx(18.0 - 6.0)
    assert [c["text"] for c in a.nbest] == ["", "fox"]
    assert with_threshold([a], 12.5) == ["fox"]


def test_n_best_list_never_exceeds_n_best_size_once_it_has_a_span(tokenizer):
    ex = SquadExample("1", "What?", CONTEXT, [])
    f = make_features([ex], tokenizer)
    fox, dog = _token_pos(f, 0, "fox"), _token_pos(f, 0, "dog")
    # "fox" scores 10, the null answer 9, "fox ... dog" 8 and the rest less
    logits = _logits(f, {0: {"start": {0: 4.5, fox: 5.0, dog: 3.0}, "end": {0: 4.5, fox: 5.0, dog: 3.0}}})
    a = answer_example(ex, f.context_spans[0], [0], f, logits, version_2=True, n_best_size=2)
    assert [c["text"] for c in a.nbest] == ["fox", ""]
