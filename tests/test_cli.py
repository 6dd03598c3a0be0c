"""The `bertkit` command: info, tokenize, embed, demo, and one-line errors for bad input.

Each command runs as `python -m bertkit ...` in a subprocess, as a user would run it."""

from __future__ import annotations

import copy
import inspect
import json
import warnings

import numpy as np
import pytest
from conftest import assert_cli_error, run_cli

import bertkit
import torch
from bertkit.cpu.optimize import for_inference
from bertkit.inference.embedding import BertEmbedding
from bertkit.model import count_parameters

LONG = "one two three four five six seven eight nine ten eleven twelve"


# ---- top level ---------------------------------------------------------------------------------
def test_no_command_prints_help_and_exits_2():
    r = run_cli()
    assert r.returncode == 2 and "usage: bertkit" in r.stdout and "embed" in r.stdout
    r = run_cli("no-such-command")
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr


# ---- info ---------------------------------------------------------------------------------------
def test_info(minilm, minilm_dir):
    r = run_cli("info", "all-minilm-l6-v2")
    assert r.returncode == 0, r.stderr
    assert f"model       {minilm_dir}" in r.stdout
    assert f"BertModel (bert_6_384_12, {count_parameters(minilm):,} parameters)" in r.stdout
    assert "vocabulary  30522 WordPiece tokens, uncased" in r.stdout and "heads       pooler" in r.stdout
    lines = r.stdout.splitlines()
    threads_line = next(line for line in lines if line.startswith("threads: "))
    assert "wait " in threads_line  # what was chosen and why
    paths = lines[lines.index("CPU inference (bertkit serve / embed / predict on this CPU):") + 1:]
    assert [p.split(":")[0].strip() for p in paths] == ["fp32", "bf16", "int8"]  # which path each precision takes, and why
    assert "int8 activations per token" in paths[2] or "per-token int8 activations" in paths[2]
    r = run_cli("info", minilm_dir, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["shape"] == "bert_6_384_12" and report["parameters"] == count_parameters(minilm)
    assert report["heads_present"] == ["pooler"] and report["vocab_size"] == 30522 and report["lowercase"] is True
    assert report["initialised_tensors"] == [] and report["unused_tensors"] == []
    assert report["threads"] == threads_line
    assert [report["cpu_inference"][k].strip() for k in ("fp32", "bf16", "int8")] == [p.strip() for p in paths]
    assert report["config"]["hidden_size"] == 384 and report["config"]["num_hidden_layers"] == 6


# ---- tokenize -----------------------------------------------------------------------------------
def test_tokenize_json_lines(minilm):
    lines = ["A crane is flying.", "", "Héllo   wörld, unaffable!"]
    r = run_cli("tokenize", "--model", "all-minilm-l6-v2", input="\n".join(lines) + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == len(lines)
    for line, row in zip(lines, rows):
        assert list(row) == ["tokens", "ids", "segment_ids"]
        e = minilm.tokenizer.encode(line)
        assert (row["tokens"], row["ids"], row["segment_ids"]) == (e.tokens, e.ids, e.segment_ids)
    assert rows[1]["tokens"] == ["[CLS]", "[SEP]"]


def test_tokenize_pairs_with_a_tab(minilm, tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("the cat sat\ton the mat\nfirst only\t\n\tsecond\tand a tab inside\n", encoding="utf-8")
    r = run_cli("tokenize", "--model", "all-minilm-l6-v2", "--pair", "--input", f)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows[0]["tokens"] == ["[CLS]", "the", "cat", "sat", "[SEP]", "on", "the", "mat", "[SEP]"]
    assert rows[0]["segment_ids"] == [0] * 5 + [1] * 4
    assert rows[1]["tokens"] == ["[CLS]", "first", "only", "[SEP]", "[SEP]"]
    # Split at the first tab: the second text keeps any later tab (as whitespace).
    assert rows[2]["ids"] == minilm.tokenizer.encode("", "second\tand a tab inside").ids
    r = run_cli("tokenize", "--model", "all-minilm-l6-v2", "--pair", input="a\tb\nno tab here\n")
    assert_cli_error(r, "<stdin>:2: --pair needs two texts separated by a tab")


def test_tokenize_truncation_is_said_once_for_the_whole_run():
    # More lines than one internal chunk (2048), every one too long: still a single note.
    n = 2100
    r = run_cli("tokenize", "--model", "all-minilm-l6-v2", "--max-len", "8", input=(LONG + "\n") * n + "short\n")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == n + 1 and all(len(row["ids"]) == 8 for row in rows[:n]) and len(rows[-1]["ids"]) == 3
    assert rows[0]["tokens"][-1] == "[SEP]"
    note = r.stderr.splitlines()
    assert len(note) == 1 and note[0].startswith("bertkit: note: ") and f"{n} of {n + 1} inputs" in note[0]
    assert "--max-len 8" in note[0]


def test_tokenize_with_a_bare_vocab_file(minilm_vocab):
    r = run_cli("tokenize", "--model", minilm_vocab, "--cased", input="Paris\n")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"] == ["[CLS]", "[UNK]", "[SEP]"]  # no capitalised "Paris" in an uncased vocab
    r = run_cli("tokenize", "--model", minilm_vocab, input="Paris\n")
    assert json.loads(r.stdout)["tokens"] == ["[CLS]", "paris", "[SEP]"]


def test_tokenize_bad_input(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\nbroken \xe2\x82 here\n")
    assert_cli_error(run_cli("tokenize", "--model", "all-minilm-l6-v2", "--input", bad), f"{bad}:3: invalid UTF-8")
    assert_cli_error(run_cli("tokenize", "--model", "all-minilm-l6-v2", input=b"ok\n\xff\n"), "<stdin>:2: invalid UTF-8")
    r = run_cli("tokenize", "--model", "all-minilm-l6-v2", "--errors", "replace", "--input", bad)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    assert_cli_error(run_cli("tokenize", "--model", "no-such-model", input="x\n"), "unknown model 'no-such-model'", "all-minilm-l6-v2")
    assert_cli_error(run_cli("tokenize", "--model", "all-minilm-l6-v2", "--max-len", "1", input="x\n"), "max_len 1 is too small")


# ---- embed --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def emb(minilm):
    """What `bertkit embed` runs on the CPU: the model after for_inference (the compiled encoder)."""
    return BertEmbedding(for_inference(copy.deepcopy(minilm), torch.device("cpu")), device="cpu")


def test_embed_token_vectors_jsonl(emb):
    sentences = ["a crane is flying", "hello", "unaffable cranes"]
    r = run_cli("embed", "--sentences", *sentences, "--pooling", "none", "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == len(sentences)
    for text, row, (tokens, vectors) in zip(sentences, rows, emb(sentences)):
        assert list(row) == ["text", "tokens", "vectors"] and row["text"] == text
        assert row["tokens"] == tokens and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        got = np.array(row["vectors"], dtype=np.float32)
        assert got.shape == (len(tokens), 384)  # one vector per WordPiece, [CLS] and [SEP] included
        np.testing.assert_allclose(got, vectors, rtol=0, atol=2e-6)


def test_embed_file_to_npy_with_mean_pooling_and_one_truncation_note(emb, tmp_path, sst2_dev):
    texts = sst2_dev[:50] + [LONG, "", LONG]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "f.npy"
    r = run_cli("embed", "--file", f, "--pooling", "mean", "--format", "npy", "--out", out, "--max-len", "12")
    assert r.returncode == 0, r.stderr
    matrix = np.load(out)
    assert matrix.shape == (len(texts), 384) and matrix.dtype == np.float32
    short = BertEmbedding(emb.model, max_len=12, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = short.sentence_vectors(texts, pooling="mean")
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-5)
    n_long = short.n_truncated
    assert n_long >= 2
    err = r.stderr.splitlines()
    notes = [line for line in err if line.startswith("bertkit: note:")]
    assert len(notes) == 1 and f"{n_long} of {len(texts)} sentences" in notes[0] and "--max-len 12" in notes[0]
    assert err == notes + [f"wrote {len(texts)} sentence vectors to {out}"]


def test_embed_truncation_note_is_said_once_across_chunks(tmp_path, minilm):
    # A tiny random model (the point is the note, not the vectors) keeps 4,200 sentences cheap.
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=minilm.tokenizer.vocab_size)
    bertkit.save(bertkit.BertModel(cfg), tmp_path / "tiny", tokenizer=minilm.tokenizer)
    n = 4200  # more than one internal chunk of 4096 lines
    f = tmp_path / "many.txt"
    f.write_text("a b c d e f g h i j\n" * n, encoding="utf-8")
    out = tmp_path / "cls.npy"
    r = run_cli("embed", "--model", tmp_path / "tiny", "--file", f, "--pooling", "cls", "--format", "npy",
                "--out", out, "--max-len", "6", "--batch-size", "256")
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (n, 128)
    assert r.stderr.splitlines() == [
        f"bertkit: note: {n} of {n} sentences were longer than --max-len 6 tokens and were truncated",
        f"wrote {n} sentence vectors to {out}",
    ]


def test_embed_cls_pooling_jsonl_from_stdin(emb):
    sentences = ["the cat sat on the mat", "dogs bark"]
    r = run_cli("embed", "--file", "-", "--pooling", "cls", input="\n".join(sentences) + "\n")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["text"] for row in rows] == sentences and all(list(row) == ["text", "vector"] for row in rows)
    np.testing.assert_allclose(np.array([row["vector"] for row in rows]), emb.sentence_vectors(sentences, "cls"), rtol=0, atol=2e-6)


def test_embed_bad_input(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a good line\n\xc0\xafbad\n")
    assert_cli_error(run_cli("embed", "--file", bad), f"{bad}:2: invalid UTF-8")
    assert_cli_error(run_cli("embed", "--file", bad, "--pooling", "mean", "--format", "npy", "--out", tmp_path / "x.npy"),
                     f"{bad}:2: invalid UTF-8")
    assert_cli_error(run_cli("embed", "--file", tmp_path / "missing.txt"), "missing.txt: cannot open")
    assert_cli_error(run_cli("embed", "--sentences", "x", "--format", "npy", "--out", tmp_path / "y.npy"),
                     "--format npy holds one vector per sentence")
    assert_cli_error(run_cli("embed", "--sentences", "x", "--pooling", "mean", "--format", "npy"), "--format npy needs --out")


# ---- demo ---------------------------------------------------------------------------------------
def test_demo_runs(tmp_path, monkeypatch, capsys):
    """`bertkit demo` end to end, every step, made small: `make demo` runs the full-size one.

    In-process so that the fine-tuning step can be shrunk (the full demo takes minutes)."""
    import bertkit.cli.demo as demo
    from bertkit.cli import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it
    finetune = demo.step_finetune
    if "train_examples" in inspect.signature(finetune).parameters:
        monkeypatch.setattr(demo, "step_finetune", lambda name: finetune(name, train_examples=64))
    argv = ["demo"]
    options = run_cli("demo", "--help").stdout
    if "--pretrain-steps" in options:
        argv += ["--pretrain-steps", "2"]
    if "--out" in options:
        argv += ["--out", str(tmp_path / "demo")]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "crane" in out and "[CLS]" in out
