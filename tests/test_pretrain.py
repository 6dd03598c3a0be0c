"""The pretraining loop: exact resume after SIGKILL, DDP equivalence, checkpoints, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bertkit
from bertkit.checkpoint import to_hf_state_dict
from bertkit.config import BertConfig
from bertkit.model import BertForPreTraining

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2" / "wiki.valid.tokens"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def bertkit_cli(*args, check=True, timeout=600, env=ENV):
    proc = subprocess.run([sys.executable, "-m", "bertkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"bertkit {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Real shards: the first ~600 lines of WikiText-2 valid with MiniLM's uncased vocabulary."""
    if not WIKITEXT.is_file():
        pytest.skip("../shared/data is not present")
    tmp = tmp_path_factory.mktemp("pretrain")
    corpus = tmp / "wiki.tokens"
    corpus.write_text("".join(WIKITEXT.read_text(encoding="utf-8").splitlines(keepends=True)[:600]), encoding="utf-8")
    vocab = bertkit.resolve("all-minilm-l6-v2") / "vocab.txt"
    bertkit_cli("pretrain-data", "--input", corpus, "--vocab", vocab, "--out", tmp / "shards", "--format", "wikitext",
                "--max-seq-length", "64", "--max-predictions-per-seq", "10", "--dupe-factor", "1")
    return tmp / "shards"


def train_args(data, out, *extra):
    return ["pretrain", "--data", data, "--config", "bert_2_128_2", "--out", out, "--batch-size", "8",
            "--lr", "1e-3", "--warmup-ratio", "0.25", "--log-interval", "1", "--no-progress", *extra]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def test_resume_after_sigkill_is_exact(shards, tmp_path):
    steps, half = 8, 4
    full, killed = tmp_path / "full", tmp_path / "killed"
    bertkit_cli(*train_args(shards, full, "--steps", steps, "--ckpt-interval", half))

    # The same run, killed with SIGKILL once its step-4 checkpoint is in place, then resumed.
    cmd = [sys.executable, "-m", "bertkit", *map(str, train_args(shards, killed, "--steps", steps, "--ckpt-interval", half))]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / f"checkpoint-{half}").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed; the test proves nothing"
    bertkit_cli(*train_args(shards, killed, "--steps", steps, "--ckpt-interval", half, "--resume"))

    a, b = metrics(full), metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        for key in ("loss", "mlm_loss", "nsp_loss", "lr"):
            assert abs(ra[key] - rb[key]) <= 1e-6, (ra["step"], key, ra[key], rb[key])
    wa, wb = weights(full / "final"), weights(killed / "final")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    # the checkpoints it wrote load in transformers with both heads
    transformers = pytest.importorskip("transformers")
    model, info = transformers.BertForPreTraining.from_pretrained(killed / f"checkpoint-{steps}", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def final_params(out: Path) -> dict[str, torch.Tensor]:
    return weights(out / "final")


def assert_close_params(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, worst


def test_ddp_two_processes_match_one_process_and_accumulation(shards, tmp_path):
    common = ["--steps", "3", "--dropout", "0", "--lr", "1e-4", "--ckpt-interval", "100"]
    one = tmp_path / "one"
    bertkit_cli(*train_args(shards, one, *common))
    accum = tmp_path / "accum"
    bertkit_cli(*train_args(shards, accum, *common, "--accumulate", "2"))
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "bertkit",
         *map(str, train_args(shards, two, *common))],
        capture_output=True, text=True, env=ENV, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the run really moved the weights (else equality proves nothing)
    torch.manual_seed(0)
    start = to_hf_state_dict(BertForPreTraining(BertConfig.from_preset("bert_2_128_2", vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    p_one = final_params(one)
    assert max((p_one[k] - start[k]).abs().max().item() for k in start) > 1e-4
    assert_close_params(p_one, final_params(two))
    assert_close_params(p_one, final_params(accum))
    # ranks other than 0 write nothing: one metrics file, one set of checkpoints
    assert [r["step"] for r in metrics(two)] == [1, 2, 3]


def test_keeps_last_checkpoints_and_falls_back_from_a_corrupt_one(shards, tmp_path):
    out = tmp_path / "run"
    bertkit_cli(*train_args(shards, out, "--steps", "4", "--ckpt-interval", "1", "--keep-checkpoints", "2"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    st = out / "checkpoint-4" / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # truncated, as by a crash or a full disk
    proc = bertkit_cli(*train_args(shards, out, "--steps", "5", "--ckpt-interval", "1", "--resume"))
    assert "checkpoint-4 cannot be resumed from" in proc.stdout + proc.stderr
    assert "resuming from" in proc.stderr and "checkpoint-3" in proc.stderr  # log lines go to stderr
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertkit: error:"), proc.stderr
    return lines[0]


def test_max_tokens_batches(shards, tmp_path):
    """--max-tokens: global batches of up to N real tokens (their row count varies), on the one loop."""
    out = tmp_path / "tokens"
    bertkit_cli(*train_args(shards, out, "--steps", "4", "--max-tokens", "1024", "--accumulate", "2"))
    rows = [r for r in metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["tokens_per_s"] > 0 for r in rows)
    assert (out / "final" / "model.safetensors").is_file()
    msg = one_line_error(bertkit_cli(*train_args(shards, tmp_path / "t2", "--steps", "1", "--max-tokens", "8"), check=False))
    assert "--max-tokens 8 is smaller than one instance" in msg


def test_explicit_shape(shards, tmp_path):
    """d2l's shape (2 layers, hidden 128, 2 heads, FFN 256: not 4 x hidden) named by flags."""
    out = tmp_path / "d2l"
    args = [a for a in train_args(shards, out, "--steps", "1") if a not in ("--config", "bert_2_128_2")]
    bertkit_cli(*args, "--layers", "2", "--hidden", "128", "--heads", "2", "--ffn", "256")
    cfg = json.loads((out / "final" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]) == (2, 128, 2, 256)
    msg = one_line_error(bertkit_cli(*args, "--layers", "2", "--hidden", "128", check=False))
    assert "needs --heads too" in msg


def test_bad_input(shards, tmp_path):
    # shards of another vocabulary size than the model
    other = BertForPreTraining(BertConfig.from_preset("bert_2_128_2", vocab_size=100))
    bertkit.save(other, tmp_path / "small-vocab")
    msg = one_line_error(bertkit_cli("pretrain", "--data", shards, "--model", tmp_path / "small-vocab", "--out",
                                     tmp_path / "x", "--steps", "1", check=False))
    assert "30522" in msg and "100" in msg
    # an empty shard directory
    (tmp_path / "empty").mkdir()
    msg = one_line_error(bertkit_cli(*train_args(tmp_path / "empty", tmp_path / "y", "--steps", "1"), check=False))
    assert "no .npz shards" in msg
    # --resume with no checkpoint: refuses, and says how to start fresh
    msg = one_line_error(bertkit_cli(*train_args(shards, tmp_path / "z", "--steps", "1", "--resume"), check=False))
    assert "--resume-or-start" in msg
    bertkit_cli(*train_args(shards, tmp_path / "z", "--steps", "1", "--resume-or-start"))
    assert (tmp_path / "z" / "final" / "model.safetensors").is_file()
    # a directory that already holds checkpoints, without --resume
    msg = one_line_error(bertkit_cli(*train_args(shards, tmp_path / "z", "--steps", "1"), check=False))
    assert "--resume" in msg
    # a batch that does not divide across accumulation steps (or ranks)
    msg = one_line_error(bertkit_cli(*train_args(shards, tmp_path / "w", "--steps", "1", "--accumulate", "3"), check=False))
    assert "not divisible" in msg


def test_divergence_stops_with_the_last_good_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    proc = bertkit_cli(*train_args(shards, out, "--steps", "50", "--ckpt-interval", "1", "--lr", "1e30",
                                   "--warmup-ratio", "0", "--max-grad-norm", "0"), check=False)
    msg = one_line_error(proc)
    assert "diverged" in msg
    kept = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if kept:  # the named checkpoint exists and loads
        assert kept[-1].name in msg
        bertkit.load(kept[-1])


def test_masked_lm_only_pretraining(tmp_path):
    """--no-nsp shards hold single `[CLS] A [SEP]` segments; pretraining on them trains the masked LM
    alone (no NSP columns), in one process or two, and the result loads as transformers' BertForMaskedLM."""
    if not WIKITEXT.is_file():
        pytest.skip("WikiText-2 not found")
    corpus = tmp_path / "wiki.tokens"
    corpus.write_text("\n".join(WIKITEXT.read_text(encoding="utf-8").splitlines()[:400]) + "\n", encoding="utf-8")
    vocab = bertkit.resolve("all-minilm-l6-v2") / "vocab.txt"
    shards = tmp_path / "shards"
    bertkit_cli("pretrain-data", "--input", corpus, "--vocab", vocab, "--out", shards, "--format", "wikitext",
                "--max-seq-length", "64", "--dupe-factor", "1", "--no-nsp", "--no-progress")
    stats = json.loads((shards / "stats.json").read_text())
    assert stats["settings"]["nsp"] is False and stats["random_next_share"] is None
    from bertkit.data.shards import list_shards, read_shard

    a = read_shard(list_shards(shards)[0])
    assert (a["next_sentence_labels"] == -1).all() and (a["segment_ids"] == 0).all()
    rows = torch.arange(len(a["valid_lengths"]))
    ids = torch.from_numpy(a["input_ids"]).long()
    assert (ids[:, 0] == 101).all() and (ids[rows, torch.from_numpy(a["valid_lengths"]).long() - 1] == 102).all()
    assert ((ids == 102).sum(1) == 1).all()  # one [SEP]: a single segment
    for n, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        args = train_args(shards, out, "--steps", "3", "--eval-data", shards, "--eval-interval", "3", "--eval-batches", "2",
                          "--dropout", "0")
        if n == 1:
            bertkit_cli(*args)
        else:
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                   "-m", "bertkit", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
        rows_ = metrics(out)
        assert all("nsp_loss" not in r and "nsp_accuracy" not in r and "eval_nsp_accuracy" not in r for r in rows_)
        assert [r["step"] for r in rows_ if "mlm_loss" in r] == [1, 2, 3] and any("eval_mlm_accuracy" in r for r in rows_)
    a1, a2 = weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    assert max(float((a1[k] - a2[k]).abs().max()) for k in a1) < 1e-5
    transformers = pytest.importorskip("transformers")
    assert transformers.BertForMaskedLM.from_pretrained(tmp_path / "one" / "final") is not None


def test_masked_lm_only_pretraining_lowers_held_out_loss_on_real_text(tmp_path):
    """WikiText-2: train on the start of valid, hold out the start of test (text the run never sees);
    after 40 masked-LM-only steps the held-out MLM loss is far below a random network's of the same shape."""
    from bertkit.data.loader import PretrainingLoader
    from bertkit.train.pretrain import evaluate

    if not WIKITEXT.is_file():
        pytest.skip("WikiText-2 not found")
    vocab = bertkit.resolve("all-minilm-l6-v2") / "vocab.txt"
    for name, source, n in (("train", WIKITEXT, 600), ("heldout", WIKITEXT.with_name("wiki.test.tokens"), 300)):
        corpus = tmp_path / f"{name}.tokens"
        corpus.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:n]) + "\n", encoding="utf-8")
        bertkit_cli("pretrain-data", "--input", corpus, "--vocab", vocab, "--out", tmp_path / name, "--format", "wikitext",
                    "--max-seq-length", "64", "--max-predictions-per-seq", "10", "--dupe-factor", "1", "--no-nsp",
                    "--no-progress")
    out = tmp_path / "run"
    bertkit_cli(*train_args(tmp_path / "train", out, "--steps", "40", "--eval-data", tmp_path / "heldout",
                            "--eval-interval", "40", "--ckpt-interval", "40", "--eval-before"))
    heldout = PretrainingLoader(tmp_path / "heldout", 32, shuffle=False)
    torch.manual_seed(0)
    untrained = evaluate(BertForPreTraining(BertConfig.from_preset("bert_2_128_2", vocab_size=30522)), heldout)
    before, *_, trained = [r for r in metrics(out) if "eval_mlm_loss" in r]
    assert before["step"] == 0 and abs(before["eval_mlm_loss"] - untrained["eval_mlm_loss"]) < 1e-4  # --eval-before
    assert trained["step"] == 40 and trained["eval_instances"] == untrained["eval_instances"] == heldout.num_instances
    assert "eval_nsp_loss" not in trained and "eval_nsp_loss" not in untrained
    assert untrained["eval_mlm_loss"] > 10.0  # about ln(30522): a random network guesses among all tokens
    assert trained["eval_mlm_loss"] < untrained["eval_mlm_loss"] - 1.0, (trained, untrained)  # 10.36 -> about 8.5
    # the final checkpoint scores the same on the held-out shards here, and loads in transformers
    final = evaluate(bertkit.load(out / "final", head="pretraining"), heldout)
    assert abs(final["eval_mlm_loss"] - trained["eval_mlm_loss"]) < 1e-4
    transformers = pytest.importorskip("transformers")
    assert transformers.BertForMaskedLM.from_pretrained(out / "final") is not None
