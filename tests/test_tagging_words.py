"""Words: CoNLL-style splitting of raw text, and word vectors (GluonNLP's oov_way) from MiniLM: each
word's vector is the average / sum / last of its pieces' vectors, and its offsets cut out the word."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_cli_error, run_cli

from bertkit.inference.embedding import BertEmbedding
from bertkit.errors import BertkitError
from bertkit.tagging.words import piece_groups, split_words

TEXTS = ["Café Zürich's naïve U.S.-style deal, said O'Neill (Reuters).", "unaffable   playwrights\tembiggen", "x"]


def test_split_words_like_conll():
    text = "The U.S. and Germany's EU-backed plan, worth 1,000.5 million (Reuters) said O'Neill... ok.London,with"
    words = [text[a:b] for a, b in split_words(text)]
    assert words == ["The", "U.S.", "and", "Germany", "'s", "EU-backed", "plan", ",", "worth", "1,000.5", "million",
                     "(", "Reuters", ")", "said", "O'Neill", "...", "ok", ".", "London", ",", "with"]
    assert split_words("  \t ") == []


def test_piece_groups_follow_the_continuation_mark():
    tokens = ["[CLS]", "una", "##ff", "##able", "play", "##wright", "##s", ",", "[SEP]"]
    assert piece_groups(tokens) == [(1, 4), (4, 7), (7, 8)]


@pytest.fixture(scope="module")
def emb(minilm):
    return BertEmbedding(minilm)


@pytest.mark.parametrize("combine", ["avg", "sum", "last"])
def test_word_vectors_combine_the_pieces(emb, combine):
    pieces = emb(TEXTS)
    words = emb.word_vectors(TEXTS, combine)
    for text, (tokens, token_vectors), (ws, offsets, vectors) in zip(TEXTS, pieces, words):
        groups = piece_groups(tokens)
        assert len(ws) == len(offsets) == len(vectors) == len(groups)
        for (a, b), vector in zip(groups, vectors):
            part = token_vectors[a:b]
            expected = part.mean(0) if combine == "avg" else part.sum(0) if combine == "sum" else part[-1]
            np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)
        assert [text[s:e] for s, e in offsets] == ws
    assert any(b - a > 1 for a, b in piece_groups(pieces[1][0]))  # multi-piece words are really there
    ws, _, _ = words[0]
    assert ws[:4] == ["Café", "Zürich", "'", "s"] and "U" in ws  # BERT's own words: punctuation apart
    assert words[1][0] == ["unaffable", "playwrights", "embiggen"]
    with pytest.raises(BertkitError, match="--words 'max'"):
        emb.word_vectors(TEXTS, "max")


def test_embed_cli_words(emb):
    r = run_cli("embed", "--sentences", TEXTS[1], "--words", "last", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["words"] == ["unaffable", "playwrights", "embiggen"] and row["offsets"][1] == [12, 23]
    [(_, _, vectors)] = emb.word_vectors([TEXTS[1]], "last")
    np.testing.assert_allclose(np.array(row["vectors"]), vectors, atol=2e-6)
    assert_cli_error(run_cli("embed", "--sentences", "x", "--words", "avg", "--pooling", "mean"), "--words")
