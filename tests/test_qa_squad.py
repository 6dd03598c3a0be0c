"""`bertkit squad` end to end on real SQuAD paragraphs with a tiny model: it learns, its outputs load
in transformers, answer() and `bertkit predict --question` agree, and SQuAD 2.0 keeps its threshold."""

from __future__ import annotations

import json

import pytest
import torch

import bertkit
from bertkit.config import BertConfig
from bertkit.model import BertForQuestionAnswering
from bertkit.train.squad import SquadConfig, run_squad

from conftest import assert_cli_error, run_cli


def _subset(data_dir, name, article, n_paragraphs, n_questions, path):
    d = json.loads((data_dir / "squad" / name).read_text())
    art = d["data"][article]
    paragraphs = [{**p, "qas": p["qas"][:n_questions]} for p in art["paragraphs"][:n_paragraphs]]
    path.write_text(json.dumps({"version": d["version"], "data": [{"title": art["title"], "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="module")
def tiny_init(minilm, tmp_path_factory):
    """A freshly initialised 2-layer, 128-wide QA model with all-minilm-l6-v2's vocabulary."""
    torch.manual_seed(0)
    cfg = BertConfig.from_preset("bert_2_128_2", minilm.tokenizer.vocab_size)
    return bertkit.save(BertForQuestionAnswering(cfg), tmp_path_factory.mktemp("tiny_init"), minilm.tokenizer)


@pytest.fixture(scope="module")
def trained(data_dir, tiny_init, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("squad_tiny")
    data = _subset(data_dir, "dev-v1.1.json", 1, 2, 5, tmp / "ten.json")  # 10 real questions on 2 paragraphs
    torch.set_num_threads(1)
    before = run_squad(str(tiny_init), tmp / "before", predict_file=data, config=SquadConfig(progress=False), quiet=True)
    config = SquadConfig(epochs=25, lr=3e-3, batch_size=10, max_seq_length=192, progress=False)
    after = run_squad(str(tiny_init), tmp / "out", train_file=data, predict_file=data, config=config, quiet=True)
    return data, tmp / "out", before, after


def test_tiny_model_learns_real_paragraphs(trained):
    data, out, before, after = trained
    assert before["exact"] <= 20
    assert after["exact"] >= 80 and after["f1"] >= 80, after
    assert after["epochs"][-1]["train_loss"] < 0.5 * after["epochs"][0]["train_loss"]
    official_keys = {"exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"}
    assert official_keys <= set(json.loads((out / "eval_results.json").read_text()))
    for name in ("predictions.json", "nbest_predictions.json", "metrics.jsonl", "model.safetensors", "config.json", "vocab.txt"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r for r in rows) and any("exact" in r for r in rows)


def test_checkpoint_loads_in_transformers_with_the_same_logits(trained):
    transformers = pytest.importorskip("transformers")
    _, out, _, _ = trained
    ours = bertkit.load(out)
    theirs = transformers.BertForQuestionAnswering.from_pretrained(out).eval()
    batch = ours.tokenizer(["Who won?", "Where was the game played?"], ["Denver won the game.", "It was played in Santa Clara."])
    with torch.no_grad():
        start, end = ours(batch)
        ref = theirs(input_ids=batch.input_ids, token_type_ids=batch.segment_ids, attention_mask=batch.attention_mask.long())
    mask = batch.attention_mask
    assert torch.allclose(start[mask], ref.start_logits[mask], atol=1e-4)
    assert torch.allclose(end[mask], ref.end_logits[mask], atol=1e-4)


def test_answer_api_and_cli_agree_with_the_predictions(trained):
    data, out, _, _ = trained
    model = bertkit.load(out)
    assert model.info["head"] == "question_answering" and model.info["max_seq_length"] == 192
    qa = json.loads(data.read_text())["data"][0]["paragraphs"][0]
    predictions = json.loads((out / "predictions.json").read_text())
    q = qa["qas"][0]
    a = bertkit.answer(model, q["question"], qa["context"])
    assert a["text"] == predictions[q["id"]] and qa["context"][a["start"] : a["end"]] == a["text"]
    assert 0 < a["score"] <= 1
    r = run_cli("predict", "--model", out, "--question", q["question"], "--context", qa["context"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == pytest.approx(a)


def test_v2_threshold_is_tuned_written_and_remembered(data_dir, tiny_init, tmp_path):
    data = _subset(data_dir, "dev-v2.0-half.json", 0, 2, 8, tmp_path / "v2.json")
    qas = [qa for p in json.loads(data.read_text())["data"][0]["paragraphs"] for qa in p["qas"]]
    assert any(qa["is_impossible"] for qa in qas) and not all(qa["is_impossible"] for qa in qas)
    config = SquadConfig(version_2=True, epochs=3, lr=3e-3, batch_size=8, max_seq_length=192, progress=False)
    out = tmp_path / "out"
    results = run_squad(str(tiny_init), out, train_file=data, predict_file=data, config=config, quiet=True)
    for key in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh", "NoAns_total", "HasAns_total"):
        assert key in results
    odds = json.loads((out / "null_odds.json").read_text())
    assert set(odds) == {qa["id"] for qa in qas}
    best = results["best_f1_thresh"]
    info = json.loads((out / "bertkit.json").read_text())
    assert info["null_score_diff_threshold"] == best and info["version_2"] is True
    at_best = json.loads((out / "predictions_best_threshold.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    best_spans = {q: next(c["text"] for c in cands if c["text"]) for q, cands in nbest.items()}
    assert at_best == {q: "" if odds[q] > best else best_spans[q] for q in odds}
    at_zero = json.loads((out / "predictions.json").read_text())
    assert at_zero == {q: "" if odds[q] > 0 else best_spans[q] for q in odds}
    # predict-only with the checkpoint: defaults to v2 and its tuned threshold
    again = run_squad(str(out), tmp_path / "again", predict_file=data, config=SquadConfig(progress=False), quiet=True)
    assert json.loads((tmp_path / "again" / "predictions.json").read_text()) == at_best
    assert again["f1"] == pytest.approx(results["at_best_f1_thresh"]["f1"])
    assert again["f1"] == pytest.approx(results["best_f1"])
