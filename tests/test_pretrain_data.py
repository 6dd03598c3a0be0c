"""`bertkit pretrain-data` end to end: shards, stats.json, --workers parity, the loader, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertkit.cli import main
from bertkit.data.loader import BATCH_KEYS, PretrainingLoader
from bertkit.data.pretraining import CorpusFile, PretrainingConfig, create_pretraining_data
from bertkit.data.shards import read_shard

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("shard-*.npz"))}


def _rows(directory: Path) -> list[bytes]:
    """Every instance as bytes (ids + masks), sorted: a multiset to compare coverage."""
    out = []
    for p in sorted(directory.glob("shard-*.npz")):
        a = read_shard(p)
        for i in range(len(a["valid_lengths"])):
            out.append(a["input_ids"][i].tobytes() + a["masked_lm_positions"][i].tobytes())
    return sorted(out)


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, wiki_valid_path, minilm_vocab) -> Path:
    """WikiText-2 valid, dupe_factor 1, in several small chunks (so several shards)."""
    out = tmp_path_factory.mktemp("small")
    create_pretraining_data([CorpusFile(str(wiki_valid_path), "wikitext")], minilm_vocab, out,
                            PretrainingConfig(dupe_factor=1, chunk_mb=0.15, seed=1), workers=1, progress=False)
    return out


# ---- shards and stats -------------------------------------------------------------------------------


def test_workers_give_identical_shards(tmp_path, small_shards, wiki_valid_path, minilm_vocab):
    create_pretraining_data([CorpusFile(str(wiki_valid_path), "wikitext")], minilm_vocab, tmp_path,
                            PretrainingConfig(dupe_factor=1, chunk_mb=0.15, seed=1), workers=2, progress=False)
    one, two = _digests(small_shards), _digests(tmp_path)
    assert len(one) >= 5
    assert one == two  # byte for byte


def test_seed_changes_the_output(tmp_path, small_shards, wiki_valid_path, minilm_vocab):
    create_pretraining_data([CorpusFile(str(wiki_valid_path), "wikitext")], minilm_vocab, tmp_path,
                            PretrainingConfig(dupe_factor=1, chunk_mb=0.15, seed=2), progress=False)
    assert _digests(small_shards) != _digests(tmp_path)


def test_shard_arrays_and_stats(small_shards):
    stats = json.loads((small_shards / "stats.json").read_text())
    a = read_shard(sorted(small_shards.glob("shard-*.npz"))[0])
    n = len(a["valid_lengths"])
    assert a["input_ids"].shape == (n, 128) and a["segment_ids"].shape == (n, 128)
    assert a["masked_lm_positions"].shape == a["masked_lm_ids"].shape == a["masked_lm_weights"].shape == (n, 20)
    assert a["next_sentence_labels"].shape == (n,)
    assert a["input_ids"].dtype == np.int32 and a["masked_lm_weights"].dtype == np.float32
    assert stats["documents"] == 60 and stats["sentences"] > 7000
    assert stats["instances"] == sum(s["instances"] for s in stats["shards"])
    assert stats["tokens"] == sum(int(read_shard(small_shards / s["file"])["valid_lengths"].sum()) for s in stats["shards"])
    assert 0 < stats["padding_share"] < 0.2 and 15 < stats["mean_masked_per_instance"] < 20
    assert stats["time_s"] >= 0 and stats["dynamic_masking"] is False
    settings = stats["settings"]
    assert settings["vocab_size"] == 30522 and settings["max_seq_length"] == 128 and settings["lowercase"] is True
    assert settings["dupe_factor"] == 1 and settings["seed"] == 1 and settings["masked_lm_prob"] == 0.15
    assert (small_shards / "vocab.txt").is_file()


# ---- the CLI ------------------------------------------------------------------------------------------


def test_cli_on_wikitext(tmp_path, wiki_valid_path, minilm_dir, capsys):
    out = tmp_path / "out"
    rc = main(["pretrain-data", "--input", str(wiki_valid_path), "--vocab", str(minilm_dir), "--out", str(out),
               "--dupe-factor", "1", "--max-seq-length", "64", "--max-predictions-per-seq", "10", "--seed", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "instances" in printed and "tokens/s" in printed
    stats = json.loads((out / "stats.json").read_text())
    assert stats["settings"]["max_seq_length"] == 64 and stats["settings"]["inputs"][0]["format"] == "wikitext"
    assert stats["settings"]["lowercase"] is True  # from the vocab dir's tokenizer_config.json
    a = read_shard(sorted(out.glob("*.npz"))[0])
    assert a["input_ids"].shape[1] == 64 and a["masked_lm_positions"].shape[1] == 10


def test_vocab_by_model_or_gluonnlp_vocabulary_name(tmp_path, wiki_valid_path, minilm_dir, monkeypatch):
    """--vocab takes a model name (its vocabulary) and GluonNLP's vocabulary names as well as paths."""
    args = ["pretrain-data", "--input", str(wiki_valid_path), "--dupe-factor", "1", "--max-seq-length", "64", "--seed", "4"]
    assert main([*args, "--vocab", str(minilm_dir), "--out", str(tmp_path / "by-path")]) == 0
    assert main([*args, "--vocab", "all-minilm-l6-v2", "--out", str(tmp_path / "by-name")]) == 0
    for a, b in zip(sorted((tmp_path / "by-path").glob("*.npz")), sorted((tmp_path / "by-name").glob("*.npz"))):
        assert a.read_bytes() == b.read_bytes()
    from bertkit.cli import pretrain_data

    asked = []
    monkeypatch.setattr("bertkit.pretrained.resolve", lambda name: asked.append(name) or minilm_dir)
    assert pretrain_data._named_vocabulary("book_corpus_wiki_en_uncased") == minilm_dir
    assert asked == ["bert_12_768_12/book_corpus_wiki_en_uncased"]  # the zoo model trained on that corpus


def test_cli_subprocess_cased_and_existing_output(tmp_path, wiki_valid_path, minilm_vocab):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    args = [sys.executable, "-m", "bertkit", "pretrain-data", "--input", str(wiki_valid_path), "--vocab",
            str(minilm_vocab), "--out", str(tmp_path), "--dupe-factor", "1", "--cased"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["settings"]["lowercase"] is False
    again = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    _assert_one_line_error(again.returncode, again.stderr, "already holds pretraining shards", "--overwrite")


# ---- bad input: exit status 2 and one line naming the problem ------------------------------------------


def _assert_one_line_error(rc: int, stderr: str, *fragments: str) -> None:
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertkit: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _error(capsys, *argv: str) -> str:
    rc = main(["pretrain-data", *map(str, argv)])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err)
    return err


def test_bad_inputs(tmp_path, minilm_vocab, wiki_valid_path, capsys):
    out = tmp_path / "out"
    common = ["--vocab", minilm_vocab, "--out", out, "--dupe-factor", "1"]

    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    assert "empty.txt: the file is empty" in _error(capsys, "--input", empty, *common)

    singles = tmp_path / "singles.txt"
    singles.write_text("One sentence here.\n\nAnother lone sentence.\n\nA third one.\n", encoding="utf-8")
    err = _error(capsys, "--input", singles, *common)
    assert "singles.txt: no document has two or more sentences" in err
    assert not list(out.glob("*.npz")) and not (out / "stats.json").exists()

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"A first sentence.\nA second \xc3\x28 sentence.\n")
    assert "bad.txt:2: invalid UTF-8" in _error(capsys, "--input", bad, *common)
    assert main(["pretrain-data", "--input", str(bad), *map(str, common), "--errors", "replace"]) == 0
    capsys.readouterr()

    assert "vocabulary file not found" in _error(capsys, "--input", wiki_valid_path, "--vocab", tmp_path / "nope.txt",
                                                 "--out", tmp_path / "o2")
    no_mask = tmp_path / "no_mask.txt"
    no_mask.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", encoding="utf-8")
    assert "lacks the special token(s) [MASK]" in _error(capsys, "--input", wiki_valid_path, "--vocab", no_mask,
                                                          "--out", tmp_path / "o3")
    no_cls = tmp_path / "no_cls.txt"
    no_cls.write_text("[PAD]\n[UNK]\n[SEP]\n[MASK]\nthe\n", encoding="utf-8")
    assert "[CLS]" in _error(capsys, "--input", wiki_valid_path, "--vocab", no_cls, "--out", tmp_path / "o4")

    assert "too small for a pair" in _error(capsys, "--input", wiki_valid_path, *common, "--max-seq-length", "4")
    for prob in ("0", "1", "1.5", "-0.1"):
        assert "--masked-lm-prob" in _error(capsys, "--input", wiki_valid_path, *common, "--masked-lm-prob", prob)
    assert "input file not found" in _error(capsys, "--input", tmp_path / "missing.txt", *common)


def test_refuses_existing_shards_unless_overwrite(tmp_path, small_shards, wiki_valid_path, minilm_vocab, capsys):
    (tmp_path / "old.npz").write_bytes(b"x")
    args = ["--input", wiki_valid_path, "--vocab", minilm_vocab, "--out", tmp_path, "--dupe-factor", "1"]
    assert "already holds pretraining shards (old.npz); pass --overwrite" in _error(capsys, *args)
    assert main(["pretrain-data", *map(str, args), "--overwrite"]) == 0
    assert not (tmp_path / "old.npz").exists()


# ---- the loader -----------------------------------------------------------------------------------------


def test_loader_covers_every_row_once(small_shards):
    loader = PretrainingLoader(small_shards, batch_size=32, seed=0)
    stats = json.loads((small_shards / "stats.json").read_text())
    assert loader.num_instances == stats["instances"] and not loader.dynamic_masking
    seen = []
    batches = list(loader)
    assert len(batches) == len(loader)
    for b in batches:
        assert set(b) == set(BATCH_KEYS)
        width = int(b["valid_lengths"].max())
        assert b["input_ids"].shape[1] == width == b["segment_ids"].shape[1]  # trimmed to the longest row
        assert b["masked_lm_weights"].dtype.is_floating_point and b["input_ids"].dtype.is_signed
        ids = np.zeros((len(b["valid_lengths"]), 128), dtype=np.int32)
        ids[:, :width] = b["input_ids"].numpy()
        pos = np.zeros((len(ids), 20), dtype=np.int32)
        pos[:, : b["masked_lm_positions"].shape[1]] = b["masked_lm_positions"].numpy()
        seen += [ids[i].tobytes() + pos[i].tobytes() for i in range(len(ids))]
    assert sorted(seen) == _rows(small_shards)


def test_loader_buckets_by_length(small_shards):
    bucketed = list(PretrainingLoader(small_shards, batch_size=32, seed=0))
    plain = list(PretrainingLoader(small_shards, batch_size=32, seed=0, bucket=False))
    def padding(batches):
        return 1 - sum(int(b["valid_lengths"].sum()) for b in batches) / sum(b["input_ids"].numel() for b in batches)
    assert padding(bucketed) < padding(plain) / 2


def test_loader_deterministic_per_epoch(small_shards):
    loader = PretrainingLoader(small_shards, batch_size=16, seed=5)
    first = [b["input_ids"][0].tolist() for b in loader]
    assert first == [b["input_ids"][0].tolist() for b in PretrainingLoader(small_shards, batch_size=16, seed=5)]
    loader.set_epoch(1)
    assert first != [b["input_ids"][0].tolist() for b in loader]
    assert first != [b["input_ids"][0].tolist() for b in PretrainingLoader(small_shards, batch_size=16, seed=6)]


def test_loader_splits_across_ranks(small_shards):
    world = 3
    loaders = [PretrainingLoader(small_shards, batch_size=16, seed=2, rank=r, world_size=world) for r in range(world)]
    assert len({len(ld) for ld in loaders}) == 1  # same number of batches on every rank
    rows = []
    for ld in loaders:
        batches = list(ld)
        assert len(batches) == len(ld)
        for b in batches:
            rows += [bytes(np.asarray(r[r > 0], dtype=np.int32)) for r in b["input_ids"].numpy()]
    assert len(rows) == len(set(rows)) or len(set(rows)) > 0.99 * len(rows)  # (dupes only from identical text)
    total = json.loads((small_shards / "stats.json").read_text())["instances"]
    assert total - len(rows) < world * len(list(small_shards.glob("*.npz")))  # at most world-1 dropped per shard


def test_dynamic_masking(tmp_path, wiki_valid_path, minilm_vocab):
    create_pretraining_data([CorpusFile(str(wiki_valid_path), "wikitext")], minilm_vocab, tmp_path,
                            PretrainingConfig(dupe_factor=1, dynamic_masking=True, seed=1), progress=False)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["dynamic_masking"] is True and stats["mean_masked_per_instance"] is None
    a = read_shard(sorted(tmp_path.glob("*.npz"))[0])
    assert "masked_lm_positions" not in a and "input_ids" in a
    loader = PretrainingLoader(tmp_path, batch_size=64, seed=3)
    assert loader.dynamic_masking
    epoch0 = list(loader)
    assert [b["masked_lm_positions"].tolist() for b in epoch0] == [b["masked_lm_positions"].tolist() for b in loader]
    loader.set_epoch(1)
    epoch1 = list(loader)
    assert [b["masked_lm_positions"].tolist() for b in epoch0] != [b["masked_lm_positions"].tolist() for b in epoch1]
    mask_id = loader.tokenizer().mask_id
    now, labels, valid, counts = [], [], [], []
    for b in epoch0:
        w = b["masked_lm_weights"] > 0
        rows, slots = np.nonzero(w.numpy())
        pos = b["masked_lm_positions"].numpy()[rows, slots]
        now.append(b["input_ids"].numpy()[rows, pos])
        labels.append(b["masked_lm_ids"].numpy()[rows, slots])
        valid.append(b["valid_lengths"].numpy())
        counts.append(w.sum(1).numpy())
    now, labels = np.concatenate(now), np.concatenate(labels)
    assert abs((now == mask_id).mean() - 0.8) < 0.02 and abs(((now == labels) & (now != mask_id)).mean() - 0.1) < 0.02
    valid, counts = np.concatenate(valid), np.concatenate(counts)
    assert (counts == np.minimum(20, np.maximum(1, np.round(valid * 0.15)))).all()


def test_loader_errors(tmp_path):
    from bertkit.errors import BertkitError

    with pytest.raises(BertkitError, match="not found"):
        PretrainingLoader(tmp_path / "none", batch_size=2)
    with pytest.raises(BertkitError, match="no .npz shards"):
        PretrainingLoader(tmp_path, batch_size=2)
