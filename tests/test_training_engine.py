"""The one training loop (bertkit/train/loop.py) through `finetune` and `squad`: SIGKILL then --resume
ends with the weights of a run never stopped; torchrun with 2 processes equals one process with the
same global batch; --max-tokens and --precision bf16 train; bad flags are one-line errors that
overwrite nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, assert_cli_error, run_cli
from safetensors.torch import load_file
from test_finetune import FILLER, POSITIVE, toy_checkpoint, write_toy

from bertkit.device import native_bf16_cpu

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
FINETUNE = ["finetune", "--task", "text", "--epochs", "4", "--batch-size", "16", "--lr", "2e-3", "--max-len", "16",
            "--threads", "1", "--quiet"]
SQUAD = ["squad", "--epochs", "3", "--batch-size", "8", "--lr", "2e-3", "--max-seq-length", "48", "--doc-stride", "16",
         "--max-query-length", "8", "--threads", "1", "--quiet"]


def write_squad(path: Path, n_paragraphs: int = 12, seed: int = 0) -> Path:
    """A tiny SQuAD 1.1 file in the toy vocabulary: find the one positive word in a paragraph of filler."""
    rnd = random.Random(seed)
    data = []
    for p in range(n_paragraphs):
        words = [rnd.choice(FILLER) for _ in range(rnd.randint(20, 50))]
        qas = []
        for q in range(3):
            at = rnd.randrange(len(words))
            words[at] = rnd.choice(POSITIVE)
        context = " ".join(words)
        for q, (i, w) in enumerate((i, w) for i, w in enumerate(words) if w in POSITIVE):
            start = len(" ".join(words[:i])) + (1 if i else 0)
            qas.append({"id": f"p{p}q{q}", "question": "the good ?", "answers": [{"text": w, "answer_start": start}]})
        data.append({"title": f"t{p}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return {"base": toy_checkpoint(root / "base"), "data": write_toy(root / "data", n_train=320),
            "squad": write_squad(root / "squad.json"), "root": root}


def cli(*args, check=True, extra_env=None, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "bertkit", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(extra_env or {})}, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"bertkit {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def finetune_args(toy, out, *extra):
    return [*FINETUNE, "--data-dir", toy["data"], "--model", toy["base"], "--out", out, *extra]


def squad_args(toy, out, *extra):
    return [*SQUAD, "--train", toy["squad"], "--model", toy["base"], "--out", out, *extra]


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


def kill_at_checkpoint(args, out: Path, step: int) -> int:
    """Run the command, SIGKILL it once a checkpoint of step `step` or later is in place (the loop
    keeps only the newest, so a given one may come and go between two looks); the run must not have
    finished. Returns the step of the checkpoint it was killed after."""
    proc = subprocess.Popen([sys.executable, "-m", "bertkit", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300

    def reached():
        return [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if int(p.name.split("-")[1]) >= step]

    while not reached():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before it was killed: the test proves nothing"
    return max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


@pytest.mark.parametrize("job", ["finetune", "squad"])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(toy, job):
    root = toy["root"] / f"resume-{job}"
    make = finetune_args if job == "finetune" else squad_args
    full, killed = root / "full", root / "killed"
    # long enough that the kill comes well before the end: 6 epochs (finetune: 20 steps each, squad ~9)
    cli(*make(toy, full, "--ckpt-interval", "5", "--epochs", "6"))
    step = kill_at_checkpoint(make(toy, killed, "--ckpt-interval", "5", "--epochs", "6"), killed, 25 if job == "finetune" else 10)
    proc = cli(*make(toy, killed, "--ckpt-interval", "5", "--epochs", "6", "--resume"))
    assert f"resuming from {killed / 'checkpoint-'}" in proc.stderr
    wa, wb = weights(full), weights(killed)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert not list(killed.glob("checkpoint-*")), "a finished run keeps only its result"
    if job == "finetune":
        a = json.loads((full / "eval_results.json").read_text())
        b = json.loads((killed / "eval_results.json").read_text())
        assert a["dev"] == b["dev"] and a["best_epoch"] == b["best_epoch"]
        assert [r["dev_accuracy"] for r in a["epochs"]] == [r["dev_accuracy"] for r in b["epochs"]]
        assert b["resumed_from"].endswith(f"checkpoint-{step}")


@pytest.mark.parametrize("job", ["finetune", "squad"])
def test_two_processes_equal_one_with_the_same_global_batch(toy, job):
    root = toy["root"] / f"ddp-{job}"
    make = finetune_args if job == "finetune" else squad_args
    # no dropout noise differs between ranks only if there is none: equality of the arithmetic
    base = root / "base"
    cfg = json.loads((Path(toy["base"]) / "config.json").read_text())
    base.mkdir(parents=True)
    for f in Path(toy["base"]).iterdir():
        (base / f.name).write_bytes(f.read_bytes())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (base / "config.json").write_text(json.dumps(cfg))
    args = [a if a != toy["base"] else base for a in make(toy, root / "one", "--epochs", "1")]
    cli(*args)
    two = [a if a != root / "one" else root / "two" for a in args]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "bertkit", *map(str, two)], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w1, w2, w0 = weights(root / "one"), weights(root / "two"), load_file(base / "model.safetensors")
    moved = max(float((w1["bert." + k] - w0[k]).abs().max()) for k in w0 if "bert." + k in w1)
    assert moved > 1e-3  # the run really moved the weights, else equality proves nothing
    for name in w1:
        if name == "qa_outputs.bias":
            # Its true gradient is 0: the bias shifts every position's start (end) logit alike, and a
            # softmax cross-entropy's gradient sums to 0 over positions. What it gets is rounding noise,
            # which Adam scales up to steps of ~lr; so it only shows that it stayed near 0 on both sides.
            assert float(w1[name].abs().max()) < 1e-3 and float(w2[name].abs().max()) < 1e-3
            continue
        assert torch.allclose(w1[name], w2[name], atol=1e-5, rtol=0), (name, float((w1[name] - w2[name]).abs().max()))
    if job == "finetune":
        results = json.loads((root / "two" / "eval_results.json").read_text())
        assert results["processes"] == 2


def test_max_tokens_batches_train(toy):
    out = toy["root"] / "max-tokens"
    proc = cli(*finetune_args(toy, out, "--max-tokens", "120"))
    results = json.loads((out / "eval_results.json").read_text())
    assert results["dev"]["accuracy"] >= 0.95
    assert results["hyperparameters"]["max_tokens"] == 120
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in r for r in rows)
    assert json.loads(proc.stdout)["dev"]["accuracy"] == results["dev"]["accuracy"]


@pytest.mark.skipif(not native_bf16_cpu(), reason="this CPU has no native bf16 (AVX512_BF16 / AMX)")
def test_bf16_training_learns_and_saves_float32_weights(toy):
    out = toy["root"] / "bf16"
    cli(*finetune_args(toy, out, "--precision", "bf16"))
    assert json.loads((out / "eval_results.json").read_text())["dev"]["accuracy"] >= 0.95
    assert all(t.dtype == torch.float32 for t in weights(out).values())


# ---- bad input: one line, nothing overwritten ------------------------------------------------------
def test_bad_training_flags_are_one_line_errors(toy, tmp_path):
    out = tmp_path / "out"
    assert_cli_error(run_cli(*finetune_args(toy, out, "--precision", "fp16")), "--precision fp16 needs a CUDA GPU")
    assert_cli_error(run_cli(*finetune_args(toy, out, "--device", "cuda:7")), "--device cuda:7")
    assert_cli_error(run_cli(*finetune_args(toy, out, "--max-tokens", "4")), "--max-tokens 4 is smaller than the longest")
    assert_cli_error(run_cli(*squad_args(toy, out, "--precision", "half")), "--precision half needs a CUDA GPU")
    assert not out.exists()


def test_resume_without_a_checkpoint_or_of_another_job_overwrites_nothing(toy, tmp_path):
    done = tmp_path / "done"
    cli(*finetune_args(toy, done, "--epochs", "1"))
    before = {p.name: p.read_bytes() for p in done.iterdir() if p.is_file()}
    assert_cli_error(run_cli(*finetune_args(toy, done, "--resume")), "--resume", "holds no checkpoint to resume from")
    assert {p.name: p.read_bytes() for p in done.iterdir() if p.is_file()} == before

    # a squad run's checkpoint is not a finetune run's
    squad = tmp_path / "squad"
    kill_at_checkpoint(squad_args(toy, squad, "--ckpt-interval", "2", "--epochs", "6"), squad, 2)
    kept = sorted(p.name for p in squad.rglob("*"))
    assert_cli_error(run_cli(*finetune_args(toy, squad, "--resume")), "is a checkpoint of squad, not of finetune text")
    assert sorted(p.name for p in squad.rglob("*")) == kept
    # other flags than the first run's would resume onto another schedule
    assert_cli_error(run_cli(*squad_args(toy, squad, "--epochs", "5", "--resume")), "belongs to a run of", "this one has")
    assert sorted(p.name for p in squad.rglob("*")) == kept
    assert sorted(p.name for p in squad.rglob("*")) == kept
    # and without --resume, an unfinished run's checkpoints are not silently replaced
    assert_cli_error(run_cli(*squad_args(toy, squad)), "already holds checkpoints of an unfinished run")


def test_squad_takes_the_optimizer_flag(toy):
    out = toy["root"] / "squad-lamb"
    cli(*squad_args(toy, out, "--optimizer", "lamb", "--epochs", "1"))
    info = json.loads((out / "bertkit.json").read_text())
    assert info["hyperparameters"]["optimizer"] == "lamb"
    w0 = load_file(Path(toy["base"]) / "model.safetensors")
    w1 = weights(out)
    assert max(float((w1["bert." + k] - w0[k]).abs().max()) for k in w0 if "bert." + k in w1) > 1e-4
