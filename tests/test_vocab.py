"""WordPiece vocabulary training on WikiText-2 (valid to train, test to evaluate), API and CLI."""

from __future__ import annotations

import json

import pytest
from conftest import assert_cli_error, read_lines, run_cli

import bertkit
from bertkit.tokenizer import SPECIAL_TOKENS, BertTokenizer, load_vocab, train_vocab

SIZE = 30000


def unk_rate(tok: BertTokenizer, lines: list[str]) -> tuple[float, int]:
    ids = [i for row in tok.tokenize_batch(lines) for i in row]
    return sum(i == tok.unk_id for i in ids) / len(ids), len(ids)


@pytest.fixture(scope="module")
def trained(wiki_valid_path):
    return train_vocab([wiki_valid_path], size=SIZE)


def check_vocab(tokens: list[str]) -> None:
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] is id 0
    assert len(set(tokens)) == len(tokens)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)
    assert any(t.startswith("##") for t in tokens)


def test_vocab_trained_on_wikitext2_valid_covers_wikitext2_test(trained, wiki_test_path, capsys):
    check_vocab(trained)
    # On so small a corpus the trainer stops short of 30000: it never invents pieces no word needs.
    assert 5000 < len(trained) <= SIZE
    tok = BertTokenizer({t: i for i, t in enumerate(trained)})
    rate, n = unk_rate(tok, [line for line in read_lines(wiki_test_path) if line.strip()])
    assert n > 200_000
    assert rate < 0.01, rate
    with capsys.disabled():
        print(f"\n[vocab] WikiText-2 valid, --size {SIZE}: {len(trained)} tokens; [UNK] on WikiText-2 test {rate:.4%} of {n} tokens")


def test_uncased_vocab_has_no_capitals_and_cased_keeps_them(trained, wiki_valid_path):
    assert not any(t != t.lower() for t in trained if t not in SPECIAL_TOKENS)
    cased = train_vocab([wiki_valid_path], size=SIZE, lowercase=False)
    check_vocab(cased)
    assert "The" in cased and "the" in cased
    assert len(cased) > len(trained)


def test_vocab_training_bad_input(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    with pytest.raises(bertkit.BertkitError, match="no text found in .*blank.txt"):
        train_vocab([blank], size=100)
    with pytest.raises(bertkit.BertkitError, match="--size 3 is too small"):
        train_vocab([blank], size=3)
    with pytest.raises(bertkit.BertkitError, match="no input files"):
        train_vocab([], size=100)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nanother fine one\nbroken \xc3\x28 here\n")
    with pytest.raises(bertkit.BertkitError, match=r"bad.txt:3: invalid UTF-8"):
        train_vocab([bad], size=100)
    # errors="replace" reads past it.
    assert train_vocab([bad], size=100, min_frequency=1, errors="replace")[:5] == list(SPECIAL_TOKENS)


def test_cli_vocab(tmp_path, trained, wiki_valid_path, wiki_test_path):
    out = tmp_path / "uncased"
    r = run_cli("vocab", "--input", wiki_valid_path, "--size", SIZE, "--out", out)
    assert r.returncode == 0, r.stderr
    tokens = [t for t, _ in sorted(load_vocab(out / "vocab.txt").items(), key=lambda kv: kv[1])]
    check_vocab(tokens)
    # The tokenizers WordPiece trainer breaks ties in hash-map order (huggingface/tokenizers#1794), so
    # two runs on the same corpus may pick a few different pieces: compare the vocabularies loosely.
    assert len(set(tokens) & set(trained)) > 0.98 * len(trained)
    assert f"wrote {out}/vocab.txt: {len(tokens)} tokens" in r.stdout and "uncased" in r.stdout
    assert f"no more than {len(tokens)}" in r.stdout  # says it stopped short of --size
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    tok = BertTokenizer.from_dir(out)
    assert tok.lowercase and tok.pad_id == 0 and tok.mask_id == 4
    rate, _ = unk_rate(tok, [line for line in read_lines(wiki_test_path, 1500) if line.strip()])
    assert rate < 0.01

    # --cased, and the result works as --model for `bertkit tokenize`.
    cased = tmp_path / "cased"
    r = run_cli("vocab", "--input", wiki_valid_path, "--size", 20000, "--out", cased, "--cased")
    assert r.returncode == 0, r.stderr
    assert json.loads((cased / "tokenizer_config.json").read_text())["do_lower_case"] is False
    r = run_cli("tokenize", "--model", cased, input="The Eiffel Tower\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"][1] == "The"


def test_cli_vocab_bad_input(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    assert_cli_error(run_cli("vocab", "--input", bad, "--out", tmp_path / "v"), f"{bad}:2", "invalid UTF-8")
    assert_cli_error(run_cli("vocab", "--input", tmp_path / "missing.txt", "--out", tmp_path / "v"), "missing.txt", "cannot open")
    assert not (tmp_path / "v" / "vocab.txt").exists()
