"""`bertkit squad-eval` against the official SQuAD 2.0 script, run as a subprocess on the shared files."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from bertkit.qa.metric import evaluate, normalize_answer

from conftest import run_cli


def _official(data_dir, data_file, pred_file, na_file=None, extra=()):
    cmd = [sys.executable, str(data_dir / "squad" / "evaluate-v2.0.py"), str(data_file), str(pred_file)]
    if na_file:
        cmd += ["--na-prob-file", str(na_file)]
    return subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=120)


def _ours(data_file, pred_file, na_file=None, extra=()):
    """bertkit's metric in this process (the CLI itself is tested below): (result, warning texts)."""
    import warnings

    thresh = float(extra[1]) if extra else 1.0
    def read(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    na = read(na_file) if na_file else None
    data, preds = read(data_file)["data"], read(pred_file)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(data, preds, na, thresh)
    # the official script writes its floats through json; compare the same way
    return json.loads(json.dumps(result)), "\n".join(str(w.message) for w in caught)


def _predictions(dataset, seed):
    """Spans cut from the real contexts, a realistic spread: other annotators' answers, answers with a
    neighbouring word more or less, random spans of the paragraph, and a share of empty answers."""
    rng = random.Random(seed)
    preds = {}
    for article in dataset:
        for p in article["paragraphs"]:
            words = p["context"].split()
            for qa in p["qas"]:
                answers = [a["text"] for a in qa["answers"]]
                kind = rng.random()
                if answers and kind < 0.4:
                    preds[qa["id"]] = rng.choice(answers)
                elif answers and kind < 0.6:
                    w = rng.choice(answers).split()
                    preds[qa["id"]] = " ".join(w[1:] if len(w) > 1 and rng.random() < 0.5 else w + [rng.choice(words)])
                elif kind < 0.85:
                    i = rng.randrange(len(words))
                    preds[qa["id"]] = " ".join(words[i : i + rng.randint(1, 6)])
                else:
                    preds[qa["id"]] = ""
    return preds


@pytest.fixture(scope="module")
def files(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("squad_eval")
    out = {}
    for name in ("dev-v1.1.json", "dev-v2.0-half.json"):
        dataset = json.loads((data_dir / "squad" / name).read_text())["data"]
        preds = _predictions(dataset, seed=len(name))
        rng = random.Random(1)
        na = {q: round(rng.random(), 3) if rng.random() < 0.9 else 0.5 for q in preds}  # ties on purpose
        paths = {k: tmp / f"{name}.{k}.json" for k in ("preds", "na", "empty", "missing", "subset")}
        paths["preds"].write_text(json.dumps(preds))
        paths["na"].write_text(json.dumps(na))
        paths["empty"].write_text(json.dumps({q: "" for q in preds}))
        kept = dict(list(preds.items())[::3])  # two thirds of the ids missing
        paths["missing"].write_text(json.dumps(kept))
        subset = [{**a, "paragraphs": [{**p, "qas": [qa for qa in p["qas"] if qa["id"] in kept]} for p in a["paragraphs"]]}
                  for a in dataset]
        paths["subset"].write_text(json.dumps({"data": subset}))
        out[name] = (data_dir / "squad" / name, paths)
    return out


@pytest.mark.parametrize("name", ["dev-v1.1.json", "dev-v2.0-half.json"])
def test_equal_to_official_on_predictions(files, data_dir, name):
    data, paths = files[name]
    official = _official(data_dir, data, paths["preds"])
    assert official.returncode == 0, official.stderr
    ours, _ = _ours(data, paths["preds"])
    assert ours == json.loads(official.stdout)
    assert 20 < ours["f1"] < 80  # a spread of right, partly right and wrong answers, not a degenerate case


def test_equal_to_official_with_no_answer_scores(files, data_dir):
    data, paths = files["dev-v2.0-half.json"]
    for thresh in ([], ["--na-prob-thresh", "0.3"]):
        official = _official(data_dir, data, paths["preds"], paths["na"], thresh)
        assert official.returncode == 0, official.stderr
        ours, _ = _ours(data, paths["preds"], paths["na"], thresh)
        assert ours == json.loads(official.stdout)
        assert "best_f1_thresh" in ours


@pytest.mark.parametrize("name", ["dev-v1.1.json", "dev-v2.0-half.json"])
def test_equal_to_official_on_all_empty_predictions(files, data_dir, name):
    data, paths = files[name]
    for na in ((None, paths["na"]) if name == "dev-v2.0-half.json" else (None,)):
        official = _official(data_dir, data, paths["empty"], na)
        assert official.returncode == 0, official.stderr
        ours, _ = _ours(data, paths["empty"], na)
        assert ours == json.loads(official.stdout)
    if name == "dev-v2.0-half.json":
        assert ours["NoAns_exact"] == 100.0 and ours["HasAns_exact"] == 0.0


@pytest.mark.parametrize("name", ["dev-v1.1.json", "dev-v2.0-half.json"])
def test_missing_ids(files, data_dir, name):
    """The official script crashes (KeyError) when predictions are missing; bertkit scores the questions
    that have one, with a note, and its numbers equal the official script's on exactly those questions."""
    data, paths = files[name]
    crashed = _official(data_dir, data, paths["missing"])
    assert crashed.returncode != 0 and "KeyError" in crashed.stderr
    ours, stderr = _ours(data, paths["missing"])
    assert "7046 of 10570 questions have no prediction" in stderr or "4052 of 6078" in stderr, stderr
    official = _official(data_dir, paths["subset"], paths["missing"])
    assert official.returncode == 0, official.stderr
    assert ours == json.loads(official.stdout)


def test_normalisation_and_library_call():
    assert normalize_answer("  The Denver  Broncos!") == "denver broncos"
    data = [{"paragraphs": [{"context": "x", "qas": [{"id": "1", "answers": [{"text": "Denver Broncos"}]},
                                                       {"id": "2", "answers": []}]}]}]
    r = evaluate(data, {"1": "the Broncos", "2": ""})
    assert r["exact"] == 50.0 and r["HasAns_f1"] == pytest.approx(100 * 2 / 3) and r["NoAns_exact"] == 100.0


def test_cli_equals_official(files, data_dir):
    data, paths = files["dev-v2.0-half.json"]
    r = run_cli("squad-eval", data, paths["preds"], "--na-prob-file", paths["na"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(_official(data_dir, data, paths["preds"], paths["na"]).stdout)


def test_bad_files(tmp_path, files):
    data, _ = files["dev-v1.1.json"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"56be4db0acb8001400a502ec": "Denver", }')
    from conftest import assert_cli_error

    assert_cli_error(run_cli("squad-eval", data, bad), str(bad), "line 1")
    assert_cli_error(run_cli("squad-eval", data, tmp_path / "nope.json"), "nope.json", "not found")
