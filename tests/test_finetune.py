"""Fine-tuning: optimizers and schedule, length buckets, a tiny model that learns a separable toy
task to 100%, predict on the saved checkpoint (bertkit, CLI, transformers), and the head check."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch
from conftest import assert_cli_error, run_cli, tiny_checkpoint

import bertkit
from bertkit.config import BertConfig
from bertkit.errors import BertkitError
from bertkit.model import BertModel
from bertkit.train.finetune import FinetuneConfig, finetune
from bertkit.train.optim import BertAdam, Lamb, build_optimizer, linear_warmup_decay, warmup_steps_for

POSITIVE = ["good", "great", "fine", "nice", "superb"]
NEGATIVE = ["bad", "awful", "poor", "sad", "dreadful"]
FILLER = ["the", "movie", "was", "film", "plot", "acting", "really", "very", "quite", "so"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread is fastest, and robust on a busy machine


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- optimizers and schedule ----------------------------------------------------------------
def test_bert_adam_has_no_bias_correction():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = BertAdam([w], lr=0.1, eps=1e-6, weight_decay=0.01)
    w.grad = torch.tensor([0.5, 0.5])
    opt.step()
    m, v = 0.1 * 0.5, 0.001 * 0.25  # (1 - b1) g, (1 - b2) g^2: no division by 1 - b^t
    expected = torch.tensor([1.0, -2.0]) - 0.1 * (m / (math.sqrt(v) + 1e-6) + 0.01 * torch.tensor([1.0, -2.0]))
    assert torch.allclose(w.detach(), expected)


def test_lamb_step_is_trust_ratio_scaled():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    opt = Lamb([w], lr=0.1, eps=0.0)
    w.grad = torch.tensor([1.0, 1.0])
    opt.step()  # bias-corrected Adam direction is sign(g) = [1, 1], norm sqrt(2); trust 5 / sqrt(2)
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * 5 / math.sqrt(2))


def test_build_optimizer_skips_decay_on_biases_and_layernorm():
    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    for name in ("adamw", "bertadam", "lamb", "BERT-Adam"):
        opt = build_optimizer(model, name, lr=1e-3, weight_decay=0.01, epsilon=1e-8)
        decayed, plain = opt.param_groups
        assert decayed["weight_decay"] == 0.01 and plain["weight_decay"] == 0.0 and decayed["eps"] == 1e-8
        names = {id(p): n for n, p in model.named_parameters()}
        assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in plain["params"])
        assert all(p.ndim == 2 for p in decayed["params"])
    with pytest.raises(BertkitError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, "sgd")


def test_linear_warmup_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup_decay(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25])


def test_warmup_steps_round_up_but_not_on_floating_point_noise():
    assert warmup_steps_for(30, 0.1) == 3  # 30 * 0.1 is 3.0000000000000004
    assert warmup_steps_for(2000, 0.05) == 100
    assert warmup_steps_for(115, 0.1) == 12  # 11.5 -> 12
    assert warmup_steps_for(7, 0.0) == 0


# ---- a tiny model on a toy task ---------------------------------------------------------------
def toy_checkpoint(directory: Path) -> Path:
    """A tiny encoder whose vocabulary holds the toy task's words."""
    return tiny_checkpoint(directory, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + FILLER + ["score"])


def toy_rows(n: int, seed: int):
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = rnd.sample(FILLER, rnd.randint(2, 6))
        words.insert(rnd.randint(0, len(words)), rnd.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_toy(directory: Path, n_train=160, n_dev=40) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("dev", n_dev, 1)):
        (directory / f"{split}.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in toy_rows(n, seed)))
    return directory


TOY = FinetuneConfig(epochs=8, batch_size=16, lr=2e-3, max_len=16, warmup_ratio=0.1, progress=False, log_every=5)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny random BERT fine-tuned on the toy task: (checkpoint dir, results, data dir, base model dir)."""
    root = tmp_path_factory.mktemp("toy")
    base = toy_checkpoint(root / "base")
    data = write_toy(root / "data")
    results = finetune("text", data, str(base), root / "out", TOY, quiet=True)
    return root / "out", results, data, base


def test_tiny_finetune_learns_separable_task_to_100_percent(toy):
    out, results, _, _ = toy
    assert results["dev"]["accuracy"] == 1.0
    assert results["best_epoch"] >= 1 and len(results["epochs"]) == TOY.epochs
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["dev"]["accuracy"] == 1.0 and saved["task"] == "text" and saved["hyperparameters"]["lr"] == TOY.lr
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r and "lr" in r for r in rows)  # step rows
    assert [r["epoch"] for r in rows if "dev_accuracy" in r] == list(range(1, TOY.epochs + 1))  # an eval row per epoch


def test_predict_on_saved_checkpoint(toy):
    out, _, _, _ = toy
    model = bertkit.load(out)
    assert model.labels == ["neg", "pos"]
    preds = bertkit.predict(model, ["the movie was good", "so dreadful", "plot was superb"])
    assert [p["label"] for p in preds] == ["pos", "neg", "pos"]
    assert all(0.5 < p["score"] <= 1.0 for p in preds)
    with pytest.raises(BertkitError, match="empty text"):
        bertkit.predict(model, ["  "])


def test_predict_cli_single_and_file(toy, tmp_path):
    out, _, _, _ = toy
    r = run_cli("predict", "--model", out, "the acting was awful", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    label, score = r.stdout.split("\t")
    assert label == "neg" and 0.5 < float(score) <= 1
    f = tmp_path / "in.tsv"
    f.write_text("text\nvery nice film\nthe plot was poor\n")
    r = run_cli("predict", "--model", out, "--file", f, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in r.stdout.splitlines()]
    assert [x["label"] for x in rows] == ["pos", "neg"] and all(set(x) == {"label", "score"} for x in rows)
    f.write_text("text\ttext_b\nvery nice film\tso good\nthe plot\t \n")
    assert_cli_error(run_cli("predict", "--model", out, "--file", f, env=ONE_THREAD), "in.tsv:3: empty text in column 'text_b'")


def test_transformers_loads_the_fine_tuned_checkpoint_with_labels(toy):
    transformers = pytest.importorskip("transformers")
    out, _, _, _ = toy
    hf = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    ours = bertkit.load(out)
    batch = ours.tokenizer(["the movie was good", "so dreadful"])
    with torch.no_grad():
        ref = hf(input_ids=batch.input_ids, token_type_ids=batch.segment_ids, attention_mask=batch.attention_mask.long()).logits
        mine = ours(batch.input_ids, batch.segment_ids, batch.valid_lengths)
    assert torch.allclose(ref, mine, atol=1e-5)


def test_head_that_disagrees_with_task_is_refused_unless_new_head(toy, tmp_path):
    out, _, data, _ = toy
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.tsv").write_text("text\tlabel\ngood film\tyes\nbad film\tno\n")
    (other / "dev.tsv").write_text("text\tlabel\ngood film\tyes\n")
    quick = FinetuneConfig(epochs=1, batch_size=4, max_len=16, progress=False)
    with pytest.raises(BertkitError, match=r"the checkpoint has a classification head for task text with labels \['neg', 'pos'\].*--new-head"):
        finetune("text", other, str(out), tmp_path / "o1", quick, quiet=True)
    reg = tmp_path / "reg"
    reg.mkdir()
    for split in ("train", "dev"):
        (reg / f"{split}.tsv").write_text("text\tlabel\ngood film\t4.0\nbad film\t1.0\n")
    r = run_cli("finetune", "--task", "text", "--regression", "--data-dir", reg, "--model", out, "--out", tmp_path / "o2", env=ONE_THREAD)
    assert_cli_error(r, "classification head", "regression head", "--new-head")
    res = finetune("text", other, str(out), tmp_path / "o3", quick, new_head=True, quiet=True)
    assert bertkit.load(tmp_path / "o3").labels == ["no", "yes"] and res["best_epoch"] == 1
    # the same task and labels: the head is kept and training continues
    res = finetune("text", data, str(out), tmp_path / "o4", quick, quiet=True)
    assert res["dev"]["accuracy"] == 1.0


def test_regression_and_cli_finetune(toy, tmp_path):
    _, _, _, base = toy
    d = tmp_path / "reg"
    d.mkdir()
    rows = [(t, "1.0" if l == "pos" else "0.0") for t, l in toy_rows(160, 3)]
    for split in ("train", "dev"):
        (d / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{s}\n" for t, s in rows))
    r = run_cli("finetune", "--task", "text", "--regression", "--data-dir", d, "--model", base, "--out", tmp_path / "out",
                "--epochs", "8", "--lr", "2e-3", "--batch-size", "16", "--max-len", "16", "--quiet", "--threads", "1")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert set(res["dev"]) == {"pearson", "spearman"} and res["dev"]["pearson"] > 0.8
    pred = bertkit.predict(bertkit.load(tmp_path / "out"), ["very good film", "so bad"])
    assert pred[0]["label"] is None and pred[0]["score"] > pred[1]["score"]
    r = run_cli("predict", "--model", tmp_path / "out", "very good film", env=ONE_THREAD)
    assert r.returncode == 0 and float(r.stdout) > 0.5


def test_max_steps_ends_the_schedule_inside_an_epoch_and_scores_that_part(toy, tmp_path):
    _, _, data, base = toy
    config = dataclasses.replace(TOY, epochs=1, max_steps=15, log_every=1)  # 160 rows / 16 = 10 steps an epoch
    results = finetune("text", data, str(base), tmp_path / "out", config, quiet=True)
    assert [(r["epoch"], r["step"]) for r in results["epochs"]] == [(1, 10), (2, 15)]  # the half epoch is scored
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "lr" in r]
    assert steps[-1]["step"] == 15 and steps[-1]["lr"] == 0.0 and steps[-2]["lr"] > 0  # decayed to 0 at step 15


def test_bad_flags(tmp_path):
    with pytest.raises(BertkitError, match="--max-steps must be at least 1"):
        FinetuneConfig(max_steps=0).check()
    with pytest.raises(BertkitError, match="--epochs must be at least 1"):
        FinetuneConfig(epochs=0).check()
    with pytest.raises(BertkitError, match="--warmup-ratio"):
        FinetuneConfig(warmup_ratio=1.5).check()
