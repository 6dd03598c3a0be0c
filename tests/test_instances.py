"""Pretraining instances on real text (WikiText-2 valid): Google's pairing, truncation and masking
rules, checked against a plain port of Google's loop and by their statistics over >100,000 masked
positions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bertkit.data.corpus import iter_documents
from bertkit.data.instances import PairSpans, create_pairs, truncate_pairs
from bertkit.data.masking import MaskingVocab, mask_tokens
from bertkit.data.pretraining import CorpusFile, PretrainingConfig, create_pretraining_data, tokenize_documents
from bertkit.data.shards import read_shard
from bertkit.data.wordcache import WordCacheTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MAX_SEQ = 128


@pytest.fixture(scope="module")
def masking(minilm_vocab) -> MaskingVocab:
    from bertkit.tokenizer import load_vocab

    return MaskingVocab.from_vocab(load_vocab(minilm_vocab))


@pytest.fixture(scope="module")
def chunk(wiki_valid_path, minilm_vocab):
    """All of WikiText-2 valid as one tokenized chunk (60 documents, ~7,500 sentences)."""
    from bertkit.tokenizer import BertTokenizer

    tok = WordCacheTokenizer(BertTokenizer(minilm_vocab, lowercase=True))
    return tokenize_documents(list(iter_documents(wiki_valid_path, "wikitext")), "wikitext", tok)


def _load(out: Path) -> dict[str, np.ndarray]:
    shards = [read_shard(p) for p in sorted(out.glob("shard-*.npz"))]
    return {k: np.concatenate([s[k] for s in shards]) for k in shards[0]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory, wiki_valid_path, minilm_vocab):
    """Static masks, default settings, dupe_factor 5: about 10,000 instances, 190,000 masked positions."""
    out = tmp_path_factory.mktemp("static")
    create_pretraining_data([CorpusFile(str(wiki_valid_path), "wikitext")], minilm_vocab, out,
                            PretrainingConfig(dupe_factor=5, seed=7, chunk_mb=0.4), workers=1, progress=False)
    return _load(out)


def _originals(a: dict) -> np.ndarray:
    """input_ids with the masked positions restored to their labels."""
    ids = a["input_ids"].copy()
    rows, slots = np.nonzero(a["masked_lm_weights"] > 0)
    ids[rows, a["masked_lm_positions"][rows, slots]] = a["masked_lm_ids"][rows, slots]
    return ids


# ---- pairing: the same pairs as a plain port of Google's loop ---------------------------------------


def google_instances(documents, max_seq_length, short_seq_prob, rng):
    """Google's create_instances_from_document over token lists, before truncation (same draws)."""
    out = []
    max_num_tokens = max_seq_length - 3
    for document_index, document in enumerate(documents):
        target_seq_length = max_num_tokens
        if rng.random() < short_seq_prob:
            target_seq_length = rng.randint(2, max_num_tokens)
        current_chunk, current_length, i = [], 0, 0
        while i < len(document):
            segment = document[i]
            current_chunk.append(segment)
            current_length += len(segment)
            if i == len(document) - 1 or current_length >= target_seq_length:
                if current_chunk:
                    a_end = 1
                    if len(current_chunk) >= 2:
                        a_end = rng.randint(1, len(current_chunk) - 1)
                    tokens_a = [t for s in current_chunk[:a_end] for t in s]
                    tokens_b = []
                    if len(current_chunk) == 1 or rng.random() < 0.5:
                        is_random_next = True
                        target_b_length = target_seq_length - len(tokens_a)
                        for _ in range(10):
                            random_document_index = rng.randint(0, len(documents) - 1)
                            if random_document_index != document_index:
                                break
                        random_document = documents[random_document_index]
                        random_start = rng.randint(0, len(random_document) - 1)
                        for j in range(random_start, len(random_document)):
                            tokens_b.extend(random_document[j])
                            if len(tokens_b) >= target_b_length:
                                break
                        i -= len(current_chunk) - a_end
                    else:
                        is_random_next = False
                        for j in range(a_end, len(current_chunk)):
                            tokens_b.extend(current_chunk[j])
                    out.append((tokens_a, tokens_b, is_random_next))
                current_chunk, current_length = [], 0
            i += 1
    return out


def test_pairs_match_googles_loop(chunk):
    tokens = chunk.tokens.tolist()
    documents = [[tokens[b[k]:b[k + 1]] for k in range(len(b) - 1)] for b in chunk.doc_bounds]
    expected = google_instances(documents, MAX_SEQ, 0.1, random.Random(3))
    spans = create_pairs(chunk, MAX_SEQ, 0.1, 1, random.Random(3))
    assert len(spans) == len(expected) > 1000
    for k, (tokens_a, tokens_b, is_random) in enumerate(expected):
        assert tokens[spans.a_start[k]:spans.a_end[k]] == tokens_a
        assert tokens[spans.b_start[k]:spans.b_end[k]] == tokens_b
        assert bool(spans.is_random_next[k]) == is_random


def google_truncate(len_a, len_b, max_num_tokens):
    a, b = list(range(len_a)), list(range(len_b))
    while len(a) + len(b) > max_num_tokens:
        (a if len(a) > len(b) else b).pop()
    return len(a), len(b)


def test_truncation_matches_googles_loop():
    rng = np.random.default_rng(0)
    la = rng.integers(1, 300, 3000)
    lb = rng.integers(1, 300, 3000)
    m = rng.integers(2, 200, 3000)
    for k in range(len(la)):
        spans = PairSpans(np.array([0]), np.array([la[k]]), np.array([1000]), np.array([1000 + lb[k]]),
                          np.array([False]), np.array([False]), np.array([False]), 1, 0)
        truncate_pairs(spans, int(m[k]), rng)
        got = (int(spans.a_end[0] - spans.a_start[0]), int(spans.b_end[0] - spans.b_start[0]))
        assert got == google_truncate(la[k], lb[k], m[k]), (la[k], lb[k], m[k])
        assert 0 <= spans.a_start[0] and spans.a_end[0] <= la[k] and 1000 <= spans.b_start[0]


def test_truncation_trims_front_and_back():
    n = 20000
    spans = PairSpans(np.zeros(n, np.int64), np.full(n, 200), np.full(n, 1000), np.full(n, 1010),
                      np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool), n, 0)
    truncate_pairs(spans, 125, np.random.default_rng(1))
    front = spans.a_start  # 85 tokens removed from A in each row; about half from the front
    assert abs(front.mean() / 85 - 0.5) < 0.01 and front.min() < front.max()


def test_short_target_share_near_short_seq_prob(chunk):
    spans = create_pairs(chunk, MAX_SEQ, 0.1, 20, random.Random(11))  # 1,200 per-document draws
    assert spans.documents_drawn == 20 * len(chunk.doc_bounds)
    assert abs(spans.short_targets_drawn / spans.documents_drawn - 0.1) < 0.03
    lengths = (spans.a_end - spans.a_start) + (spans.b_end - spans.b_start)
    long_rows = ~spans.short_target & ~spans.is_random_next
    # a full-length real-next pair reaches the full target unless its document ran out
    assert np.median(lengths[long_rows]) >= MAX_SEQ - 3


def test_nsp_labels_balanced(chunk):
    """0.5 per coin flip. Google's rule also forces a random B when a chunk holds one sentence (a
    document's last sentence, or one longer than a short target), which moves the overall share above
    50% when short_seq_prob > 0; without short targets the overall share is 50% +- 2 points."""
    spans = create_pairs(chunk, MAX_SEQ, 0.1, 5, random.Random(5))
    coin = spans.is_random_next[~spans.forced_random]
    assert abs(coin.mean() - 0.5) < 0.02
    assert spans.is_random_next[spans.forced_random].all()
    spans = create_pairs(chunk, MAX_SEQ, 0.0, 5, random.Random(5))
    assert abs(spans.is_random_next.mean() - 0.5) < 0.02


# ---- masking statistics over the written shards -----------------------------------------------------


def test_enough_masked_positions(shards):
    assert shards["masked_lm_weights"].sum() >= 100_000


def test_80_10_10(shards, masking):
    w = shards["masked_lm_weights"] > 0
    rows, slots = np.nonzero(w)
    now = shards["input_ids"][rows, shards["masked_lm_positions"][rows, slots]]
    label = shards["masked_lm_ids"][rows, slots]
    is_mask = now == masking.mask_id
    kept = (now == label) & ~is_mask
    replaced = ~is_mask & ~kept
    assert abs(is_mask.mean() - 0.8) < 0.01
    assert abs(kept.mean() - 0.1) < 0.01
    assert abs(replaced.mean() - 0.1) < 0.01


def test_masked_share_and_count(shards):
    valid = shards["valid_lengths"].astype(np.int64)
    masked = (shards["masked_lm_weights"] > 0).sum(axis=1)
    expected = np.minimum(20, np.maximum(1, np.round(valid * 0.15).astype(np.int64)))
    assert (masked == expected).all()  # Google's num_to_predict, every row
    below_cap = expected < 20
    assert below_cap.mean() > 0.99
    candidates = valid[below_cap] - 3  # all but [CLS] and the two [SEP]
    assert abs(masked[below_cap].sum() / candidates.sum() - 0.15) < 0.005


def test_specials_and_padding_never_chosen(shards, masking):
    w = shards["masked_lm_weights"] > 0
    rows, slots = np.nonzero(w)
    pos = shards["masked_lm_positions"][rows, slots]
    assert (pos < shards["valid_lengths"][rows]).all() and (pos > 0).all()
    labels = shards["masked_lm_ids"][rows, slots]
    assert not np.isin(labels, [masking.cls_id, masking.sep_id, masking.pad_id]).any()
    # padding slots of the prediction arrays are zero
    assert (shards["masked_lm_positions"][~w] == 0).all() and (shards["masked_lm_ids"][~w] == 0).all()
    # positions are ascending and distinct within a row
    p = np.where(w, shards["masked_lm_positions"], np.iinfo(np.int32).max)
    assert (np.diff(p, axis=1)[w[:, 1:]] > 0).all()


def test_segments_and_separators(shards, masking):
    ids = _originals(shards)
    seg = shards["segment_ids"]
    valid = shards["valid_lengths"]
    n, t = ids.shape
    assert t == MAX_SEQ and shards["input_ids"].dtype == np.int32 and shards["masked_lm_weights"].dtype == np.float32
    assert (valid <= MAX_SEQ).all() and (valid >= 5).all()
    assert (ids[:, 0] == masking.cls_id).all()
    is_sep = ids == masking.sep_id
    assert (is_sep.sum(axis=1) == 2).all()
    last_sep = t - 1 - np.argmax(is_sep[:, ::-1], axis=1)
    first_sep = np.argmax(is_sep, axis=1)
    assert (last_sep == valid - 1).all()
    assert (first_sep >= 2).all() and (last_sep - first_sep >= 2).all()  # A and B hold a token each
    pos = np.arange(t)[None, :]
    expected_seg = (pos > first_sep[:, None]) & (pos < valid[:, None])
    assert (seg == expected_seg).all()
    assert (shards["input_ids"][pos >= valid[:, None]] == 0).all()
    assert set(np.unique(shards["next_sentence_labels"])) == {0, 1}


def test_whole_word_mask_never_splits_a_word(tmp_path, wiki_valid_path, minilm_vocab, masking):
    create_pretraining_data([CorpusFile(str(wiki_valid_path), "wikitext")], minilm_vocab, tmp_path,
                            PretrainingConfig(dupe_factor=3, whole_word_mask=True, seed=3), progress=False)
    a = _load(tmp_path)
    ids = _originals(a)
    n, t = ids.shape
    chosen = np.zeros((n, t), dtype=bool)
    rows, slots = np.nonzero(a["masked_lm_weights"] > 0)
    chosen[rows, a["masked_lm_positions"][rows, slots]] = True
    assert chosen.sum() > 50_000
    cont = masking.is_subword[ids] & (np.arange(t)[None, :] < a["valid_lengths"][:, None])
    cont[:, 0] = False
    prev_special = np.isin(np.roll(ids, 1, axis=1), [masking.cls_id, masking.sep_id])
    glued = cont & ~prev_special  # a "##" piece continuing the word on its left
    assert glued.sum() > 10_000
    left = np.roll(chosen, 1, axis=1)
    assert (chosen[glued] == left[glued]).all()
    # at most the count Google allows, and words of several pieces do get masked
    assert ((a["masked_lm_weights"] > 0).sum(axis=1) <= 20).all()
    assert (chosen & glued).sum() > 1000


def test_mask_tokens_is_deterministic_and_reuses_no_state(shards, masking):
    ids = _originals(shards)[:500]
    valid = shards["valid_lengths"][:500]
    one = mask_tokens(ids, valid, masking, np.random.default_rng(9), 0.15, 20)
    two = mask_tokens(ids, valid, masking, np.random.default_rng(9), 0.15, 20)
    assert all((getattr(one, k) == getattr(two, k)).all() for k in ("input_ids", "positions", "labels", "weights"))
    assert (ids == _originals(shards)[:500]).all()  # the input is left alone
