"""WordPiece tokenizer: parity with transformers' BertTokenizerFast on real data, truncation, padding,
offsets, decoding, and bad input."""

from __future__ import annotations

import unicodedata
import warnings

import pytest
import torch

import bertkit
from bertkit.tokenizer import BertTokenizer, TruncationWarning, load_vocab, train_vocab, write_vocab

transformers = pytest.importorskip("transformers")


# ---- tokenizers under test: uncased, uncased vocab used cased, a trained cased vocab -------------
@pytest.fixture(scope="module")
def cased_vocab(tmp_path_factory, wiki_valid_path):
    tokens = train_vocab([wiki_valid_path], size=30000, lowercase=False)
    path = tmp_path_factory.mktemp("cased") / "vocab.txt"
    write_vocab(tokens, path)
    return path


@pytest.fixture(scope="module")
def tokenizers(minilm_vocab, cased_vocab):
    """name -> (bertkit tokenizer, transformers BertTokenizerFast) built from the same vocab.txt."""
    out = {}
    for name, vocab, lower in [
        ("uncased", minilm_vocab, True),
        ("uncased-vocab-cased", minilm_vocab, False),
        ("trained-cased", cased_vocab, False),
    ]:
        out[name] = (BertTokenizer(vocab, lowercase=lower), transformers.BertTokenizerFast(str(vocab), do_lower_case=lower))
    return out


@pytest.fixture(scope="module")
def datasets(sst2_dev, mrpc_dev, wiki_valid_2000):
    assert len(sst2_dev) == 872 and len(mrpc_dev) == 408 and len(wiki_valid_2000) == 2000
    return {
        "sst2-dev": (sst2_dev, None),
        "mrpc-dev-pairs": ([a for a, _ in mrpc_dev], [b for _, b in mrpc_dev]),
        "wikitext2-valid-2000": (wiki_valid_2000, None),
    }


def encode_both(ours, theirs, texts, texts_b=None, max_len=512):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        mine = ours.encode_batch(texts, texts_b, max_len=max_len)
    ref = theirs(texts, texts_b, truncation=True, max_length=max_len, return_offsets_mapping=True)
    return mine, ref


def assert_same_encodings(mine, ref, texts):
    assert len(mine) == len(ref["input_ids"])
    for i, e in enumerate(mine):
        assert e.ids == ref["input_ids"][i], f"ids differ on {texts[i]!r}"
        assert e.segment_ids == ref["token_type_ids"][i], f"segment ids differ on {texts[i]!r}"


@pytest.mark.parametrize("data", ["sst2-dev", "mrpc-dev-pairs", "wikitext2-valid-2000"])
@pytest.mark.parametrize("which", ["uncased", "uncased-vocab-cased", "trained-cased"])
def test_ids_and_segments_match_transformers(which, data, tokenizers, datasets):
    ours, theirs = tokenizers[which]
    texts, texts_b = datasets[data]
    mine, ref = encode_both(ours, theirs, texts, texts_b)
    assert_same_encodings(mine, ref, texts)
    # The tokens are the vocabulary's strings for the ids.
    for e in mine[:50]:
        assert e.tokens == ours.convert_ids_to_tokens(e.ids)
    if texts_b is not None:
        assert all(1 in e.segment_ids for e in mine)


def test_cased_and_uncased_really_differ(tokenizers, sst2_dev, wiki_valid_2000):
    up, _ = tokenizers["uncased"]
    cased, _ = tokenizers["trained-cased"]
    text = "The Eiffel Tower is in Paris"
    assert up.encode(text).tokens[1] == "the"
    assert cased.encode(text).tokens[1] == "The"
    # WikiText is cased: the cased vocabulary keeps capitals, so the ids differ on most lines.
    differ = sum(a.tokens != b.tokens for a, b in zip(up.encode_batch(wiki_valid_2000[:200]), cased.encode_batch(wiki_valid_2000[:200])))
    assert differ > 50


TRICKY = [
    "Héllo Wörld, naïve café!",
    "日本語のテキストと中文",
    "zero\u200bwidth and\u00a0no-break spaces",
    "control\x00chars\x07here\ttab",
    "emoji 🙂 and symbols ©®™ ∑",
    "x" * 120 + " long word",
    "don't stop-believing... (really?) [CLS-ish]",
    "the [MASK] sat on [SEP] the mat [unused3] [mask]",
    "ÅNGSTRÖM Ǆemal ﬁnance",
    "",
    "   \t  ",
]


@pytest.mark.parametrize("which", ["uncased", "uncased-vocab-cased", "trained-cased"])
def test_tricky_text_matches_transformers(which, tokenizers):
    ours, theirs = tokenizers[which]
    mine, ref = encode_both(ours, theirs, TRICKY)
    assert_same_encodings(mine, ref, TRICKY)
    mine, ref = encode_both(ours, theirs, TRICKY, list(reversed(TRICKY)))
    assert_same_encodings(mine, ref, TRICKY)


# ---- truncation ---------------------------------------------------------------------------------
WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()


def words(n):
    return " ".join(WORDS[:n])


def test_single_text_truncated_to_max_len_keeps_the_head(tokenizers):
    tok, _ = tokenizers["uncased"]
    full = tok.encode(words(15))
    assert len(full) == 17 and not full.truncated
    with pytest.warns(TruncationWarning):
        cut = tok.encode(words(15), max_len=8)
    assert cut.truncated and len(cut) == 8
    assert cut.tokens == ["[CLS]"] + full.tokens[1:7] + ["[SEP]"]
    exact = tok.encode(words(6), max_len=8)  # exactly max_len: not truncated
    assert len(exact) == 8 and not exact.truncated


def test_pair_truncation_is_longest_first(tokenizers):
    tok, _ = tokenizers["uncased"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        # A long first text, a short second: only the first loses tokens.
        e = tok.encode(words(15), words(3), max_len=12)
        assert e.truncated and len(e) == 12
        assert e.tokens == ["[CLS]"] + WORDS[:6] + ["[SEP]"] + WORDS[:3] + ["[SEP]"]
        assert e.segment_ids == [0] * 8 + [1] * 4
        # A short first text, a long second: only the second loses tokens.
        e = tok.encode(words(2), words(15), max_len=12)
        assert e.tokens == ["[CLS]"] + WORDS[:2] + ["[SEP]"] + WORDS[:7] + ["[SEP]"]
        # Both long: both cut from the end until their lengths differ by at most one.
        for la, lb, max_len in [(15, 12, 13), (15, 12, 14), (12, 15, 14), (9, 9, 10), (9, 9, 11), (15, 4, 9)]:
            e = tok.encode(words(la), words(lb), max_len=max_len)
            sep = e.tokens.index("[SEP]")
            na, nb = sep - 1, len(e) - sep - 2
            assert len(e) == max_len and na + nb == max_len - 3
            # The reference: drop one token at a time from the longer text; on a tie, from the text
            # that was shorter to begin with (the first, if they started equal), as transformers does.
            ra, rb = la, lb
            while ra + rb > max_len - 3:
                if ra > rb or (ra == rb and la <= lb):
                    ra -= 1
                else:
                    rb -= 1
            assert (na, nb) == (ra, rb), (la, lb, max_len)
            assert e.tokens[1 : 1 + na] == WORDS[:na] and e.tokens[sep + 1 : sep + 1 + nb] == WORDS[:nb]


@pytest.mark.parametrize("max_len", [16, 33])
def test_truncation_matches_transformers_on_real_pairs_and_lines(max_len, tokenizers, mrpc_dev, wiki_valid_2000):
    ours, theirs = tokenizers["uncased"]
    a, b = [p[0] for p in mrpc_dev], [p[1] for p in mrpc_dev]
    mine, ref = encode_both(ours, theirs, a, b, max_len=max_len)
    assert_same_encodings(mine, ref, a)
    assert sum(e.truncated for e in mine) > 300  # nearly all MRPC pairs exceed these lengths
    assert all(len(e) <= max_len for e in mine)
    lines = wiki_valid_2000[:300]
    mine, ref = encode_both(ours, theirs, lines, max_len=max_len)
    assert_same_encodings(mine, ref, lines)
    assert [e.truncated for e in mine] == [len(ours.tokenize(t)) + 2 > max_len for t in lines]


def test_truncation_is_said_once_per_call_with_a_count(tokenizers):
    tok, _ = tokenizers["uncased"]
    texts = [words(15), "short", words(12), words(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok.encode_batch(texts, max_len=8)
    msgs = [str(w.message) for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(msgs) == 1 and "2 of 4 inputs" in msgs[0] and "max_len=8" in msgs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok.encode_batch(texts, max_len=64)
    assert not [w for w in caught if issubclass(w.category, TruncationWarning)]


def test_tokenize_is_never_truncated_by_an_earlier_encode(tokenizers):
    tok, _ = tokenizers["uncased"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        tok.encode(words(15), max_len=5)
    assert len(tok.tokenize(words(15))) == 15
    assert [len(x) for x in tok.tokenize_batch([words(15), words(9)])] == [15, 9]
    with pytest.warns(TruncationWarning):
        assert len(tok.encode(words(15), max_len=5)) == 5  # and encode truncates again afterwards


@pytest.mark.parametrize("max_len,pair", [(1, False), (2, True), (0, False)])
def test_max_len_too_small_is_a_clear_error(max_len, pair, tokenizers):
    tok, _ = tokenizers["uncased"]
    with pytest.raises(bertkit.BertkitError, match=f"max_len {max_len} is too small"):
        tok.encode("hello", "world" if pair else None, max_len=max_len)


# ---- padding / valid lengths ---------------------------------------------------------------------
def test_batch_is_padded_to_its_longest_row(tokenizers):
    tok, _ = tokenizers["uncased"]
    texts = ["hello world", "a", words(9)]
    batch = tok(texts)
    lengths = [len(tok.encode(t)) for t in texts]
    assert batch.valid_lengths.tolist() == lengths == [4, 3, 11]
    assert batch.input_ids.shape == batch.segment_ids.shape == (3, 11)
    assert batch.input_ids.dtype == batch.segment_ids.dtype == batch.valid_lengths.dtype == torch.int64
    for row, e in enumerate(batch.encodings):
        n = len(e)
        assert batch.input_ids[row, :n].tolist() == e.ids
        assert batch.input_ids[row, n:].tolist() == [tok.pad_id] * (11 - n)
        assert batch.segment_ids[row, n:].tolist() == [0] * (11 - n)
    assert tok.pad_id == 0
    assert batch.attention_mask.tolist() == [[j < n for j in range(11)] for n in lengths]
    assert len(batch) == 3 and batch.to("cpu").input_ids.equal(batch.input_ids)
    # A single string is a batch of one; pairs carry segment 1 up to and including the last [SEP].
    one = tok("hello world", "second text")
    assert one.input_ids.shape == (1, 7) and one.segment_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1]]


# ---- empty and bad input -------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", " ", "   \t \n ", "\u200b", "\x00\x07"])
def test_empty_or_whitespace_text_encodes_to_cls_sep(text, tokenizers, minilm):
    tok, _ = tokenizers["uncased"]
    e = tok.encode(text)
    assert e.tokens == ["[CLS]", "[SEP]"] and e.ids == [tok.cls_id, tok.sep_id] and e.segment_ids == [0, 0]
    pair = tok.encode("hello", text)
    assert pair.tokens == ["[CLS]", "hello", "[SEP]", "[SEP]"] and pair.segment_ids == [0, 0, 0, 1]
    with torch.inference_mode():
        seq, pooled = minilm(tok([text, "a longer sentence here"]))
    assert torch.isfinite(seq).all() and torch.isfinite(pooled).all()


def test_non_string_input_is_a_clear_error(tokenizers):
    tok, _ = tokenizers["uncased"]
    with pytest.raises(bertkit.BertkitError, match="input 1: expected a string, got int"):
        tok.encode_batch(["fine", 3])
    with pytest.raises(bertkit.BertkitError, match="got 2 first texts but 1 second texts"):
        tok.encode_batch(["a", "b"], ["c"])


# ---- offsets and decode --------------------------------------------------------------------------
def uncased_form(text: str) -> str:
    """What the uncased normaliser makes of a text: lower case, accents stripped."""
    return "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")


def test_offsets_match_transformers_and_point_into_the_text(tokenizers, sst2_dev, mrpc_dev):
    ours, theirs = tokenizers["uncased"]
    mine, ref = encode_both(ours, theirs, sst2_dev)
    for i, e in enumerate(mine):
        assert e.offsets == [tuple(o) for o in ref["offset_mapping"][i]]
        for token, (s, t) in zip(e.tokens, e.offsets):
            if token in ("[CLS]", "[SEP]"):
                assert (s, t) == (0, 0)
            elif token != "[UNK]":
                assert uncased_form(sst2_dev[i][s:t]) == token.removeprefix("##")
    a, b = [p[0] for p in mrpc_dev[:100]], [p[1] for p in mrpc_dev[:100]]
    mine, ref = encode_both(ours, theirs, a, b)
    for i, e in enumerate(mine):
        assert e.offsets == [tuple(o) for o in ref["offset_mapping"][i]]
        # Offsets are into each token's own text.
        for token, seg, (s, t) in zip(e.tokens, e.segment_ids, e.offsets):
            if token not in ("[CLS]", "[SEP]", "[UNK]"):
                assert uncased_form((a, b)[seg][i][s:t]) == token.removeprefix("##")


def test_offsets_of_cased_accented_text(tokenizers):
    tok, _ = tokenizers["uncased"]
    text = "Héllo unaffable"
    e = tok.encode(text)
    assert e.tokens == ["[CLS]", "hello", "una", "##ffa", "##ble", "[SEP]"]
    assert [text[s:t] for s, t in e.offsets[1:-1]] == ["Héllo", "una", "ffa", "ble"]


def test_decode_matches_transformers(tokenizers, sst2_dev, wiki_valid_2000):
    for which in ("uncased", "trained-cased"):
        ours, theirs = tokenizers[which]
        texts = sst2_dev[:300] + [t for t in wiki_valid_2000[:200] if t.strip()]
        for e in ours.encode_batch(texts):
            assert ours.decode(e.ids) == theirs.decode(e.ids, skip_special_tokens=True)
            assert ours.decode(e.ids, skip_special_tokens=False) == theirs.decode(e.ids, skip_special_tokens=False)


def test_decode_joins_word_pieces_and_drops_special_tokens(tokenizers):
    tok, _ = tokenizers["uncased"]
    e = tok.encode("A crane is flying, unaffable!")
    assert "##ffa" in e.tokens
    assert tok.decode(e.ids) == "a crane is flying, unaffable!"
    assert tok.decode(torch.tensor(e.ids)) == "a crane is flying, unaffable!"
    full = tok.decode(e.ids, skip_special_tokens=False)
    assert full.startswith("[CLS] a crane") and full.endswith("[SEP]")
    batch = tok(["a crane", "a much longer sentence"])
    assert tok.decode(batch.input_ids[0]) == "a crane"  # padding ([PAD]) dropped too


# ---- files ---------------------------------------------------------------------------------------
def test_save_and_from_dir_keep_vocab_and_casing_and_transformers_reads_them(tmp_path, tokenizers):
    ours, _ = tokenizers["trained-cased"]
    ours.save(tmp_path)
    back = BertTokenizer.from_dir(tmp_path)
    assert back.lowercase is False and back.strip_accents is False and back.vocab == ours.vocab
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "The Café in Paris opened in 1889 ."
    assert hf(text)["input_ids"] == back.encode(text).ids == ours.encode(text).ids
    assert back.encode(text).tokens[1] == "The"


def test_vocab_file_errors_name_the_file(tmp_path):
    with pytest.raises(bertkit.BertkitError, match="vocabulary file not found"):
        load_vocab(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(bertkit.BertkitError, match="empty.txt: vocabulary file is empty"):
        load_vocab(empty)
    nospecial = tmp_path / "nospecial.txt"
    nospecial.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(bertkit.BertkitError, match=r"nospecial.txt: vocabulary lacks the special token\(s\) \[CLS\], \[SEP\]"):
        load_vocab(nospecial)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nca\xfft\n")
    with pytest.raises(bertkit.BertkitError, match=r"bad.txt:5: invalid UTF-8"):
        load_vocab(bad)


def test_vocab_ids_are_line_numbers(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n##s\nworld\n")
    tok = BertTokenizer(path)
    assert tok.vocab_size == 8 and (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    e = tok.encode("Hellos world wide")
    assert e.tokens == ["[CLS]", "hello", "##s", "world", "[UNK]", "[SEP]"] and e.ids == [2, 5, 6, 7, 1, 3]
