"""Bad SQuAD input: one clear line (or one warning) naming the file and position, never a traceback."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import bertkit
from bertkit.config import BertConfig
from bertkit.errors import BertkitError
from bertkit.model import BertForQuestionAnswering, BertForSequenceClassification
from bertkit.qa.features import make_features
from bertkit.train.squad import SquadConfig, run_squad
from bertkit.qa.squad_data import SquadDataWarning, read_squad

from conftest import assert_cli_error, run_cli

GOOD = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Ada wrote the first program in 1843.", "qas": [
    {"id": "q1", "question": "Who wrote the first program?", "answers": [{"text": "Ada", "answer_start": 0}]},
    {"id": "q2", "question": "When?", "answers": [{"text": "1843", "answer_start": 31}]}]}]}]}


def _write(tmp_path, data, name="data.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture(scope="module")
def tiny_dirs(minilm, tmp_path_factory):
    torch.manual_seed(0)
    cfg = BertConfig.from_preset("bert_2_128_2", minilm.tokenizer.vocab_size)
    qa = bertkit.save(BertForQuestionAnswering(cfg), tmp_path_factory.mktemp("qa"), minilm.tokenizer)
    cls = bertkit.save(BertForSequenceClassification(cfg, 2), tmp_path_factory.mktemp("cls"), minilm.tokenizer,
                       info={"labels": ["0", "1"]})
    return qa, cls


def test_malformed_json_names_file_and_position(tmp_path):
    path = _write(tmp_path, '{"data": [\n  {"title": "x",, }]}')
    with pytest.raises(BertkitError, match=r"data\.json: not valid JSON: .*line 2 column 17"):
        read_squad(path)


@pytest.mark.parametrize("remove,where", [
    (lambda d: d.pop("data"), "top level: missing 'data'"),
    (lambda d: d["data"][0].pop("paragraphs"), "data[0]: missing 'paragraphs'"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("qas"), "data[0].paragraphs[0]: missing 'qas'"),
    (lambda d: d["data"][0]["paragraphs"][0].pop("context"), "data[0].paragraphs[0]: missing 'context'"),
    (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("question"), "data[0].paragraphs[0].qas[1]: missing 'question'"),
])
def test_missing_fields(tmp_path, remove, where):
    data = json.loads(json.dumps(GOOD))
    remove(data)
    with pytest.raises(BertkitError, match=r"data\.json: " + where.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        read_squad(_write(tmp_path, data))


def test_empty_context(tmp_path):
    data = json.loads(json.dumps(GOOD))
    data["data"][0]["paragraphs"][0]["context"] = "  "
    with pytest.raises(BertkitError, match=r"data\[0\]\.paragraphs\[0\]\.context: empty context"):
        read_squad(_write(tmp_path, data))


def test_answer_start_mismatch_is_skipped_counted_and_reported_once(tmp_path):
    data = json.loads(json.dumps(GOOD))
    qas = data["data"][0]["paragraphs"][0]["qas"]
    qas[1]["answers"][0]["answer_start"] = 5
    qas.append({"id": "q3", "question": "What?", "answers": [{"text": "program", "answer_start": 3}]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = read_squad(_write(tmp_path, data), training=True)
    assert [ex.qid for ex in d.examples] == ["q1"]
    assert d.skipped == {"answer_start does not point at the answer text": 2}
    messages = [str(w.message) for w in caught if issubclass(w.category, SquadDataWarning)]
    assert len(messages) == 1 and "skipped 2 training question(s)" in messages[0] and "qas[1] (id q2)" in messages[0]
    assert len(read_squad(_write(tmp_path, data)).examples) == 3  # prediction does not need the offsets


def test_v2_data_needs_version_2(tmp_path, tiny_dirs):
    data = json.loads(json.dumps(GOOD))
    data["data"][0]["paragraphs"][0]["qas"].append({"id": "q9", "question": "Why?", "answers": [], "is_impossible": True})
    path = _write(tmp_path, data)
    assert read_squad(path, version_2=True).is_v2
    r = run_cli("squad", "--model", tiny_dirs[0], "--predict", path, "--out", tmp_path / "out", "--quiet")
    assert_cli_error(r, str(path), "qas[2]", "is_impossible", "--version-2")


def test_predict_file_without_answers_gives_predictions_only(tmp_path, tiny_dirs):
    data = json.loads(json.dumps(GOOD))
    for qa in data["data"][0]["paragraphs"][0]["qas"]:
        del qa["answers"]
    path = _write(tmp_path, data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_squad(str(tiny_dirs[0]), tmp_path / "out", predict_file=path, config=SquadConfig(progress=False), quiet=True)
    assert "exact" not in results and not (tmp_path / "out" / "eval_results.json").exists()
    assert set(json.loads((tmp_path / "out" / "predictions.json").read_text())) == {"q1", "q2"}
    notes = [str(w.message) for w in caught if issubclass(w.category, SquadDataWarning)]
    assert notes == [f"{path}: no answers in the file: writing predictions only, no evaluation"]


def test_max_seq_length_too_small(tmp_path, minilm):
    d = read_squad(_write(tmp_path, GOOD))
    with pytest.raises(BertkitError, match=r"--max-seq-length 8 is too small: question 'q1' takes 6 tokens"):
        make_features(d.examples, minilm.tokenizer, max_seq_length=8)
    assert len(make_features(d.examples, minilm.tokenizer, max_seq_length=10)) > 0  # 6 + 3 + one context token


def test_classification_checkpoint_without_train(tmp_path, tiny_dirs):
    path = _write(tmp_path, GOOD)
    r = run_cli("squad", "--model", tiny_dirs[1], "--predict", path, "--out", tmp_path / "out", "--quiet")
    assert_cli_error(r, "not a question-answering checkpoint", "classification", "--train")
    r = run_cli("predict", "--model", tiny_dirs[1], "--question", "Who?", "--context", "Ada did.")
    assert_cli_error(r, "not a question-answering checkpoint")
