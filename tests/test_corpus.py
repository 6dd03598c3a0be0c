"""Corpus readers, sentence splitting, the word-cache tokenizer and the embedded wiki-sample corpus."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bertkit.data import wiki_sample
from bertkit.data.corpus import check_has_text, detect_format, document_sentences, iter_documents
from bertkit.data.sentences import split_sentences
from bertkit.data.wordcache import WordCacheTokenizer
from bertkit.errors import BertkitError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tokenizer(minilm_vocab):
    from bertkit.tokenizer import BertTokenizer

    return BertTokenizer(minilm_vocab, lowercase=True)


# ---- sentence splitting ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith went to Washington. He paid $3.50 for it! Was it worth it? Yes.",
         ["Mr. Smith went to Washington.", "He paid $3.50 for it!", "Was it worth it?", "Yes."]),
        ("The U.S. Army fought. J. R. R. Tolkien wrote books, e.g. The Hobbit. It sold well.",
         ["The U.S. Army fought.", "J. R. R. Tolkien wrote books, e.g. The Hobbit.", "It sold well."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        # WikiText spaces its quotes: a quote after the full stop closes only an open quotation
        ('He said " Stop . " Then he left . " Why ? " she asked .',
         ['He said " Stop . "', "Then he left .", '" Why ? " she asked .']),
        ("It weighs 0.7 kg (see Fig. 3). It was found in 1990. 2000 was later.",
         ["It weighs 0.7 kg (see Fig. 3).", "It was found in 1990.", "2000 was later."]),
        ("Released on 14 Jan. 2001 in Europe. Sales were good... Then it ended.",
         ["Released on 14 Jan. 2001 in Europe.", "Sales were good...", "Then it ended."]),
        ("no capital after. the full stop", ["no capital after. the full stop"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


# ---- readers --------------------------------------------------------------------------------------


def test_detect_format():
    assert detect_format("wiki.valid.tokens") == "wikitext"
    assert detect_format("wiki.train.raw") == "wikitext"
    assert detect_format("corpus.txt") == "docs"


def test_wikitext_reader_on_real_file(wiki_valid_path):
    docs = list(iter_documents(wiki_valid_path, "wikitext"))
    assert len(docs) == 60  # ' = Title = ' lines in WikiText-2 valid; ' = = Section = = ' are not documents
    assert all(not line.startswith("=") for doc in docs for line in doc)
    first = document_sentences(docs[0], "wikitext")
    assert first[0].startswith("Homarus gammarus, known as the European lobster") or first[0].startswith(
        "Homarus gammarus , known as the European lobster"
    )
    assert first[1] == "It is closely related to the American lobster , H. americanus ."  # 'H.' is an initial
    text = " ".join(s for doc in docs for s in document_sentences(doc, "wikitext"))
    assert "@-@" not in text and "@,@" not in text and "@.@" not in text and "<unk>" not in text
    assert "0.7 – 2.2 kg" in text  # '0 @.@ 7' undone


def test_wikitext_sections_stay_in_their_document(tmp_path):
    path = tmp_path / "w.tokens"
    path.write_text(
        " \n = Alpha = \n \n A first line . It has two sentences . \n \n = = History = = \n \n"
        " Well @-@ known since 1 @,@ 000 BC . The king <unk> ruled . \n \n = Beta = \n \n Another article . \n",
        encoding="utf-8",
    )
    docs = list(iter_documents(path, "wikitext"))
    assert len(docs) == 2
    assert document_sentences(docs[0], "wikitext") == [
        "A first line .", "It has two sentences .", "Well-known since 1,000 BC .", "The king ruled .",
    ]
    assert document_sentences(docs[1], "wikitext") == ["Another article ."]


def test_docs_and_text_layouts(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("One sentence. Still the same line.\nSecond line.\n\n\nNext doc.\n  \nThird doc.\n", encoding="utf-8")
    docs = list(iter_documents(path, "docs"))
    assert docs == [["One sentence. Still the same line.", "Second line."], ["Next doc."], ["Third doc."]]
    assert document_sentences(docs[0], "docs") == docs[0]  # Google's layout: a line is a sentence
    text_docs = list(iter_documents(path, "text"))
    assert document_sentences(text_docs[0], "text") == ["One sentence.", "Still the same line.", "Second line."]


def test_reader_errors(tmp_path):
    with pytest.raises(BertkitError, match="unknown corpus format"):
        list(iter_documents(tmp_path / "x", "xml"))
    with pytest.raises(BertkitError, match="input file not found"):
        check_has_text(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(BertkitError, match="empty.txt: the file is empty"):
        check_has_text(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(BertkitError, match=r"bad.txt:2: invalid UTF-8"):
        list(iter_documents(bad, "docs"))
    assert list(iter_documents(bad, "docs", errors="replace")) == [["fine line", "bad \ufffd byte"]]


# ---- the word-cache tokenizer gives exactly the tokenizer's ids -------------------------------------


def test_word_cache_matches_tokenizer_on_real_text(tokenizer, wiki_valid_path):
    sentences = [s for doc in iter_documents(wiki_valid_path, "wikitext") for s in document_sentences(doc, "wikitext")]
    sentences += ["", " ", "  two  spaces ", "Ünïcödé naïve café", "中文字符 test", "tab\tand\u00a0nbsp",
                  "x\u2028y", "ctrl\x0bchar", "e\u0301t\u00e9", "a" * 150 + " long", "pipe|inside a|b | c",
                  "\u0301 mark first", "[SEP] [MASK] literal", "##piece 100%"]
    expected = tokenizer.tokenize_batch(sentences)
    cache = WordCacheTokenizer(tokenizer, max_words=5000)  # small: the cache is cleared on the way
    assert cache.tokenize_batch(sentences[:3000]) == expected[:3000]
    assert cache.tokenize_batch(sentences) == expected
    assert cache.separator == "|"  # words are tokenized a few hundred at a time, joined by " | "
    assert len(cache.slot) <= 5000 or len(cache.slot) == len({w for s in sentences for w in s.split(" ")})


def test_word_cache_cased(tokenizer):
    from bertkit.tokenizer import BertTokenizer

    cased = BertTokenizer(tokenizer.vocab, lowercase=False)
    texts = ["Café Über naïve", "MiXeD case | pipes", "e\u0301 \u0301x", ""]
    assert WordCacheTokenizer(cased).tokenize_batch(texts) == cased.tokenize_batch(texts)


# ---- wiki-sample ------------------------------------------------------------------------------------


def test_clean_wikitext_markup():
    markup = (
        "{{Infobox person|name=X|born={{birth date|1900|1|1}}}}\n"
        "'''Alan''' was a [[mathematician|mathematical]] [[logic]]ian.<ref>A book, p. 3</ref> "
        "He lived in [[London]].<ref name=\"x\"/> See [http://example.org the site] for more.\n"
        "[[File:Alan.jpg|thumb|Alan at [[Cambridge]] in 1930]]\n"
        "{| class=\"wikitable\"\n|-\n| a || b\n|}\n"
        "* a list item that is long enough to count.\n"
        "== Early life ==\n"
        "He was born in a house with <!-- a hidden comment --> a garden and&nbsp;a tree.\n"
        "== References ==\n"
        "Smith, John. A reference line that looks like prose.\n"
        "[[Category:Mathematicians]]\n"
    )
    assert wiki_sample.clean_wikitext_markup(markup) == [
        "Alan was a mathematical logician. He lived in London. See the site for more.",
        "He was born in a house with a garden and a tree.",
    ]


def _have_gensim_data() -> bool:
    try:
        wiki_sample.source_path()
        return True
    except BertkitError:
        return False


@pytest.mark.skipif(not _have_gensim_data(), reason="gensim (for its data file) is not installed")
def test_wiki_sample_builds_caches_and_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTKIT_CACHE", str(tmp_path / "cache"))
    paths = wiki_sample.wiki_sample_paths()
    assert paths.train.parent == tmp_path / "cache" / "wiki-sample-v1"
    train = paths.train.read_text(encoding="utf-8")
    heldout = paths.heldout.read_text(encoding="utf-8")
    train_docs = list(iter_documents(paths.train, "docs"))
    heldout_docs = list(iter_documents(paths.heldout, "docs"))
    assert len(train_docs) >= 80 and len(heldout_docs) >= 5
    assert train.startswith("Anarchism is a political philosophy")
    for marker in ("{{", "}}", "[[", "]]", "<ref", "&nbsp;", "'''", "Category:", "thumb|"):
        assert marker not in train and marker not in heldout, marker
    assert not set(map(tuple, train_docs)) & set(map(tuple, heldout_docs))
    # cached: a second call does not rebuild
    mtime = paths.train.stat().st_mtime_ns
    assert wiki_sample.wiki_sample_paths() == paths and paths.train.stat().st_mtime_ns == mtime
    # deterministic: a fresh build gives the same files
    again = wiki_sample.wiki_sample_paths(tmp_path / "other")
    assert again.train.read_bytes() == paths.train.read_bytes()
    assert again.heldout.read_bytes() == paths.heldout.read_bytes()


def test_wiki_sample_missing_package(monkeypatch, tmp_path):
    monkeypatch.setattr(wiki_sample.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BertkitError, match=r"pip install --no-deps gensim==4\.4\.0$"):
        wiki_sample.wiki_sample_paths(tmp_path)


@pytest.mark.skipif(not _have_gensim_data(), reason="gensim (for its data file) is not installed")
def test_wiki_sample_checksum_mismatch(monkeypatch, tmp_path):
    monkeypatch.setattr(wiki_sample, "SHA256", "0" * 64)
    with pytest.raises(BertkitError, match="does not match the expected"):
        wiki_sample.wiki_sample_paths(tmp_path)
