"""SQuAD features: answer spans through the tokenizer's offsets, windows and max-context flags."""

from __future__ import annotations

import numpy as np
import pytest

from bertkit.qa.features import (
    answer_token_span,
    make_features,
    max_context_flags,
    span_text,
    window_starts,
    _tokenize,
)
from bertkit.qa.squad_data import SquadExample, read_squad


@pytest.fixture(scope="module")
def tokenizer(minilm):
    return minilm.tokenizer


@pytest.fixture(scope="module")
def v11(data_dir):
    return read_squad(data_dir / "squad" / "dev-v1.1.json")


def test_every_v11_answer_maps_to_a_span_that_cuts_back_to_it(v11, tokenizer):
    """All 34,726 gold answers of dev-v1.1: the tokens overlapping the answer's characters, cut back
    out of the original context through their offsets, give the answer text exactly, except where
    the answer starts or ends inside a WordPiece token (no token boundary there to cut at)."""
    contexts = list(dict.fromkeys(ex.context for ex in v11.examples))
    spans = {c: s for c, (_, s) in zip(contexts, _tokenize(tokenizer, contexts))}
    total, inside_token = 0, []
    for ex in v11.examples:
        for text, start in ex.answers:
            total += 1
            end = start + len(text)
            first_last = answer_token_span(spans[ex.context], start, end)
            assert first_last is not None, (ex.qid, text)
            cut, cut_start, cut_end = span_text(ex.context, spans[ex.context], *first_last)
            if cut == text:
                continue
            # The only acceptable reason: a boundary falls strictly inside a token, so the cut is the
            # smallest token-aligned span containing the answer.
            assert cut_start <= start and end <= cut_end and (cut_start < start or end < cut_end), (ex.qid, text, cut)
            inside_token.append((ex.qid, text, cut))
    assert total == 34726
    print(f"\n{len(inside_token)} of {total} answers have a boundary inside a WordPiece token, e.g. "
          + "; ".join(f"{t!r} in {c!r}" for _, t, c in inside_token[:5]))
    assert len(inside_token) < 0.005 * total  # 77 with all-minilm-l6-v2's vocabulary


def test_training_targets_point_at_the_answer(v11, tokenizer):
    """Every kept training window's target tokens cut back to its first answer (up to in-token
    boundaries), and SQuAD 1.1 keeps only windows that hold the answer."""
    examples = v11.examples[:600]
    f = make_features(examples, tokenizer, max_seq_length=128, doc_stride=32, training=True)
    assert len(f) > len(examples)  # contexts longer than a 128-token window are cut into several
    exact = 0
    for i in range(len(f)):
        ex = examples[f.example_index[i]]
        s, e = f.start_positions[i], f.end_positions[i]
        assert f.context_start[i] <= s <= e < f.lengths[i] - 1  # inside the context part, never [CLS] in v1
        shift = f.doc_offset[i] - f.context_start[i]
        gold, gold_start = ex.answers[0]
        text, cut_start, cut_end = span_text(ex.context, f.context_spans[f.example_index[i]], s + shift, e + shift)
        # the cut is the answer, or the smallest token-aligned span around it (a boundary inside a token)
        assert cut_start <= gold_start and gold_start + len(gold) <= cut_end, (ex.qid, gold, text)
        exact += text == gold
    print(f"\n{exact} of {len(f)} training windows cut back to exactly their answer")


def _run_squad_windows(n, max_tokens, stride):
    # run_squad.py's loop, as its text reads
    spans, start = [], 0
    while start < n:
        length = min(n - start, max_tokens)
        spans.append((start, length))
        if start + length == n:
            break
        start += min(length, stride)
    return spans


def _run_squad_is_max_context(spans, index, position):
    best_score, best = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best = score, i
    return best == index


@pytest.mark.parametrize("n,max_tokens,stride", [(10, 4, 3), (300, 50, 20), (7, 7, 3), (8, 7, 128), (101, 30, 30)])
def test_windows_and_max_context_match_run_squad(n, max_tokens, stride):
    spans = window_starts(n, max_tokens, stride)
    assert spans == _run_squad_windows(n, max_tokens, stride)
    flags = max_context_flags(spans, n)
    for w, (start, length) in enumerate(spans):
        expected = [_run_squad_is_max_context(spans, w, start + k) for k in range(length)]
        assert flags[w].tolist() == expected
    owners = np.zeros(n, dtype=int)
    for w, (start, length) in enumerate(spans):
        owners[start : start + length] += flags[w]
    assert (owners == 1).all()  # every token is scored in exactly one window


def test_long_real_context_windows(v11, tokenizer):
    """A long context (ten real paragraphs joined): windows are [CLS] q [SEP] piece [SEP], cover the
    context in order, respect the lengths, and the question is cut to max_query_length."""
    paragraphs = list(dict.fromkeys(ex.context for ex in v11.examples))[:10]
    context = "\n\n".join(paragraphs)
    question = "What did the " + "very " * 40 + "long question ask about the Super Bowl?"
    ex = SquadExample("long", question, context, [])
    f = make_features([ex], tokenizer, max_seq_length=96, doc_stride=24, max_query_length=16)
    (doc_ids, spans), ((q_ids, _),) = _tokenize(tokenizer, [context])[0], _tokenize(tokenizer, [question])
    assert len(doc_ids) > 1000 and len(q_ids) > 16
    assert len(f) == len(window_starts(len(doc_ids), 96 - 16 - 3, 24))
    covered = []
    for i in range(len(f)):
        ids, segs = f.input_ids[i].tolist(), f.segment_ids[i].tolist()
        assert len(ids) <= 96
        assert ids[0] == tokenizer.cls_id and ids[17] == tokenizer.sep_id and ids[-1] == tokenizer.sep_id
        assert ids[1:17] == q_ids[:16]
        assert segs == [0] * 18 + [1] * (len(ids) - 18)
        assert f.context_start[i] == 18
        piece = ids[18:-1]
        assert piece == doc_ids[f.doc_offset[i] : f.doc_offset[i] + len(piece)]
        covered.extend(np.arange(f.doc_offset[i], f.doc_offset[i] + len(piece))[f.max_context[i]].tolist())
    assert covered == list(range(len(doc_ids)))  # each token scored once, in order


def test_v2_targets_cls_outside_the_answer_window(tokenizer):
    context = "Alpha beta gamma. " * 60 + "The treasure is buried under the old oak tree. " + "Delta epsilon. " * 60
    start = context.index("the old oak tree")
    answerable = SquadExample("a", "Where is the treasure?", context, [("the old oak tree", start)])
    impossible = SquadExample("b", "Where is the map?", context, [], is_impossible=True)
    v1 = make_features([answerable], tokenizer, max_seq_length=64, doc_stride=32, training=True)
    v2 = make_features([answerable, impossible], tokenizer, max_seq_length=64, doc_stride=32, training=True, version_2=True)
    n_windows = len(window_starts(len(v1.context_spans[0]), 64 - len(tokenizer.tokenize(answerable.question)) - 3, 32))
    assert 1 <= len(v1) < n_windows  # v1 keeps only the windows holding the answer
    assert (v1.start_positions > 0).all()
    windows_a = v2.example_index == 0
    assert windows_a.sum() == n_windows  # v2 keeps them all ...
    assert ((v2.start_positions[windows_a] > 0).sum()) == len(v1)  # ... the answer where it is whole ...
    assert (v2.start_positions[~windows_a] == 0).all() and (v2.end_positions[~windows_a] == 0).all()  # ... [CLS] else
