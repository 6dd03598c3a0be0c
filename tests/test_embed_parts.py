"""`bertkit embed` in parts (issue 21, item 9): torchrun with 2 processes writes parts that equal a
one-process run row for row; a rerun computes only the parts that are missing; other settings in
the same directory are a one-line error; without --part-lines or torchrun the output is the one
file it always was.

The parts of a torchrun run are compared with a plain one-process run within 1e-6 (parts are
batched differently from one 50-line chunk, so padding changes the last bits: about 2e-7 here);
parts that start on the command's 4,096-line chunk boundaries (the default --part-lines is 25 chunks)
are batched exactly as one process batches those lines, and equal it bit for bit; so does a part
recomputed by a rerun with the same --part-lines."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DATA, REPO, assert_cli_error, run_cli, tiny_checkpoint

from bertkit.cli import main
from bertkit.cli.embed import CHUNK
from bertkit.cpu.optimize import for_inference
from bertkit.inference.embed_parts import read_parts
from bertkit.inference.embedding import BertEmbedding

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
FALLBACK = ["a crane is flying", "a crane driver came", "the cat sat on the mat", "dogs bark at night",
            "it is a charming and often affecting journey", "unflinchingly bleak and desperate",
            "the movie is a disaster", "a gorgeous , witty , seductive movie", "this is not a good film",
            "the acting , costumes , music , cinematography and sound are all astounding"]
PART_LINES = 8  # 50 lines: 7 parts, the last one of 2 lines; rank 0 writes parts 0, 2, 4, 6 and rank 1 1, 3, 5
SETTINGS = ["--pooling", "auto", "--format", "npy", "--device", "cpu"]


def bertkit(*args, torchrun: bool = False) -> subprocess.CompletedProcess:
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if torchrun else []
    return subprocess.run([sys.executable, *launch, "-m", "bertkit", "embed", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    sst2 = DATA / "glue_data" / "SST-2" / "dev.tsv"
    if sst2.is_file():
        rows = sst2.read_text(encoding="utf-8").splitlines()[1:49]
        sentences = [row.split("\t")[0] for row in rows]
    else:
        sentences = [f"{a} {joint} {b}" for joint in (", and", "; but") for a in FALLBACK[:6] for b in FALLBACK[6:]]
    return sentences[:20] + [""] + sentences[20:] + [" ".join(sentences[:5])]  # a blank line and a long one: 50 rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory, minilm_dir, texts):
    root = tmp_path_factory.mktemp("embed-parts")
    (root / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    one = bertkit("--file", root / "in.txt", *SETTINGS, "--out", root / "one.npy")
    assert one.returncode == 0, one.stderr
    two = bertkit("--file", root / "in.txt", *SETTINGS, "--out", root / "two", "--part-lines", PART_LINES, torchrun=True)
    assert two.returncode == 0, two.stderr[-3000:]
    return {"root": root, "one": one, "two": two}


def test_two_processes_write_parts_that_equal_one_process_row_for_row(runs, texts):
    root = runs["root"]
    one, parts = np.load(root / "one.npy"), read_parts(root / "two")
    assert parts.shape == one.shape == (len(texts), 384) and parts.dtype == np.float32
    assert float(np.abs(parts - one).max()) <= 1e-6
    index = json.loads((root / "two" / "index.json").read_text())
    assert [(p["file"], p["start"], p["end"], p["rows"]) for p in index["parts"]] == [
        (f"part-{k:05d}.npy", k * 8, min(k * 8 + 8, 50), min(8, 50 - k * 8)) for k in range(7)]
    assert index["rows"] == 50 and index["dim"] == 384
    assert index["settings"]["pooling"] == "auto" and index["settings"]["part_lines"] == PART_LINES
    said = runs["two"].stderr
    assert "rank 0: wrote 4 parts (26 sentence vectors)" in said and "rank 1: wrote 3 parts (24 sentence vectors)" in said
    assert sorted(p.name for p in (root / "two").iterdir()) == sorted(
        ["index.json", "settings.json"] + [f"part-{k:05d}.npy" for k in range(7)])


def test_a_rerun_computes_only_the_missing_parts(runs):
    root = runs["root"]
    resumed = root / "resumed"
    shutil.copytree(root / "two", resumed)
    original = np.load(resumed / "part-00003.npy")
    (resumed / "part-00003.npy").unlink()
    (resumed / "index.json").unlink()
    (resumed / "part-00003.npy.tmp").write_bytes(b"half a part, as a SIGKILL leaves it")
    before = {p.name: p.stat().st_mtime_ns for p in resumed.glob("part-*.npy")}
    # one process now: the parts are cut by line number, not by rank, so the process count may change
    r = bertkit("--file", root / "in.txt", *SETTINGS, "--out", resumed, "--part-lines", PART_LINES)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"wrote 1 part (8 sentence vectors) to {resumed}, 6 of this rank's parts were already there",
        f"all 7 parts (50 rows) are in {resumed}: wrote {resumed / 'index.json'}"]
    assert {p.name: p.stat().st_mtime_ns for p in resumed.glob("part-*.npy") if p.name in before} == before
    np.testing.assert_array_equal(np.load(resumed / "part-00003.npy"), original)  # same part, same batches: same bits
    assert not (resumed / "part-00003.npy.tmp").exists()
    assert (resumed / "index.json").read_text() == (root / "two" / "index.json").read_text()
    np.testing.assert_array_equal(read_parts(resumed), read_parts(root / "two"))


def embed_in_process(capsys, *args) -> SimpleNamespace:
    """`bertkit embed ARGS` in this process (quicker than a fresh one), shaped for assert_cli_error."""
    capsys.readouterr()
    code = main(["embed", *map(str, args)])
    return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)


def test_other_settings_in_the_same_directory_are_a_one_line_error(runs, tmp_path, capsys):
    root = runs["root"]
    before = {p.name: p.stat().st_mtime_ns for p in (root / "two").iterdir()}
    r = run_cli("embed", "--file", root / "in.txt", "--pooling", "mean", "--format", "npy", "--device", "cpu",
                "--out", root / "two", "--part-lines", 16)
    assert_cli_error(r, f"{root / 'two'}: its parts were made with --pooling auto, --part-lines 8; "
                        "this run has --pooling mean, --part-lines 16")
    other = tmp_path / "other.txt"
    other.write_text("another input\n", encoding="utf-8")
    r = embed_in_process(capsys, "--file", other, *SETTINGS, "--out", root / "two", "--part-lines", PART_LINES)
    assert_cli_error(r, f"made with --file {(root / 'in.txt').resolve()} (", f"this run has --file {other.resolve()} (14 bytes)")
    assert {p.name: p.stat().st_mtime_ns for p in (root / "two").iterdir()} == before
    r = embed_in_process(capsys, "--sentences", "a", *SETTINGS, "--out", tmp_path / "x", "--part-lines", 8)
    assert_cli_error(r, "--part-lines embeds a --file in parts")
    assert_cli_error(embed_in_process(capsys, "--file", other, "--pooling", "cls", "--part-lines", 8), "give --out DIR")
    r = embed_in_process(capsys, "--file", other, *SETTINGS, "--out", root / "one.npy", "--part-lines", 8)
    assert_cli_error(r, "is a file; parts are written to a directory")
    assert not (tmp_path / "x").exists()


def test_jsonl_parts_hold_the_rows_of_a_one_process_run(runs, texts):
    root = runs["root"]
    r = bertkit("--file", root / "in.txt", "--pooling", "auto", "--device", "cpu", "--out", root / "jsonl",
                "--part-lines", 20)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (root / "jsonl").glob("part-*")) == ["part-00000.jsonl", "part-00001.jsonl",
                                                                        "part-00002.jsonl"]
    rows = read_parts(root / "jsonl")
    assert [row["text"] for row in rows] == texts
    np.testing.assert_allclose(np.array([row["vector"] for row in rows]), np.load(root / "one.npy"), rtol=0, atol=2e-6)


def test_one_process_without_part_lines_writes_one_file_as_before(runs, texts, minilm):
    root = runs["root"]
    assert runs["one"].stderr.splitlines() == [f"wrote 50 sentence vectors to {root / 'one.npy'}"]
    assert (root / "one.npy").is_file() and not (root / "settings.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # what `bertkit embed` runs on the CPU: the model after for_inference (the compiled encoder)
        expected = BertEmbedding(for_inference(copy.deepcopy(minilm), torch.device("cpu")), device="cpu").sentence_vectors(texts, pooling="auto")
    np.testing.assert_allclose(np.load(root / "one.npy"), expected, rtol=0, atol=1e-6)


def test_parts_on_chunk_boundaries_equal_one_process_bit_for_bit(tmp_path, minilm, texts):
    # A small random model keeps a chunk and a bit cheap; the point is the arithmetic, not the vectors.
    model = tiny_checkpoint(tmp_path / "tiny", minilm.tokenizer, preset="bert_2_128_2")
    words = " ".join(texts).split()
    lines = [" ".join(words[i % 97 : i % 97 + i % 31]) for i in range(CHUNK + 300)]  # lengths 0..30, mixed
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["--model", model, "--file", tmp_path / "in.txt", "--pooling", "mean", "--format", "npy", "--device", "cpu"]
    one = bertkit(*args, "--out", tmp_path / "one.npy")
    assert one.returncode == 0, one.stderr
    two = bertkit(*args, "--out", tmp_path / "two", "--part-lines", CHUNK, torchrun=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert len(list((tmp_path / "two").glob("part-*.npy"))) == 2
    np.testing.assert_array_equal(read_parts(tmp_path / "two"), np.load(tmp_path / "one.npy"))
