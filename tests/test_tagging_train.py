"""Token classification end to end on a tiny model: it learns a separable toy entity task (IOB1
files, long sentences in windows) to F1 1.0; predict gives entities whose character offsets cut
out exactly their text; the CLI; transformers loads the checkpoint and computes the same logits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_cli_error, run_cli, tiny_checkpoint

import bertkit
from bertkit.tagging.features import TaggedWindows
from bertkit.tagging.inference import word_probabilities
from bertkit.train.tagging import finetune_tagging
from bertkit.train.finetune import FinetuneConfig

FIRST = ["alice", "bob", "carol", "dave"]
LAST = ["smith", "jones"]
CITIES = ["paris", "london", "rome"]  # "london" is two pieces: lon ##don
ORGS = [("acme", "corp"), ("globex", "inc")]
FILLER = ["the", "a", "went", "to", "said", "with", "and", "met", "today", "in", "of"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_checkpoint(directory: Path) -> Path:
    """A tiny encoder whose vocabulary holds the toy sentences' words ("london" as two pieces)."""
    words = FIRST + LAST + [c for c in CITIES if c != "london"] + ["lon", "##don"] + [w for o in ORGS for w in o] + FILLER
    return tiny_checkpoint(directory, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "."] + words)


def toy_sentence(rnd: random.Random, n_entities: int) -> list[tuple[str, str]]:
    """Filler words with entities between them, tagged in IOB1 (entities start with I-, never adjacent)."""
    out = [(w, "O") for w in rnd.sample(FILLER, rnd.randint(0, 2))]
    for _ in range(n_entities):
        kind = rnd.choice(["PER", "LOC", "ORG"])
        if kind == "PER":
            words = [rnd.choice(FIRST)] + ([rnd.choice(LAST)] if rnd.random() < 0.5 else [])
        elif kind == "LOC":
            words = [rnd.choice(CITIES)]
        else:
            words = list(rnd.choice(ORGS))
        out += [(w.capitalize(), f"I-{kind}") for w in words]
        out += [(w, "O") for w in rnd.sample(FILLER, rnd.randint(1, 3))]
    return out


def write_toy(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 200, 0), ("dev", 40, 1), ("test", 40, 2)):
        rnd = random.Random(seed)
        # every 10th sentence is long (12 entities, ~50 words): more than --max-len 16 pieces, so windows
        sentences = [toy_sentence(rnd, 12 if i % 10 == 0 else rnd.randint(1, 3)) for i in range(n)]
        (directory / f"{split}.txt").write_text("".join("".join(f"{w} X {t}\n" for w, t in s) + "\n" for s in sentences))
    return directory


TOY = FinetuneConfig(epochs=10, batch_size=16, lr=2e-3, max_len=16, warmup_ratio=0.1, progress=False, log_every=5)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagging")
    base = toy_checkpoint(root / "base")
    data = write_toy(root / "data")
    results = finetune_tagging("tags", data, str(base), root / "out", TOY, quiet=True)
    return root / "out", results, data


def test_tiny_model_learns_the_toy_task(toy):
    out, results, _ = toy
    # the best epoch is the first with a perfect dev score; by the last epoch, test is perfect too
    assert results["dev"]["f1"] == 1.0 and results["test"]["f1"] > 0.98
    assert results["epochs"][-1]["dev_f1"] == 1.0 and results["epochs"][-1]["test_f1"] == 1.0
    assert set(results["dev"]["per_type"]) == {"PER", "LOC", "ORG"}
    assert results["epochs"][0]["dev_f1"] < 1.0  # it learned: the first epoch was not already perfect
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["task"] == "tags" and saved["main_metric"] == "f1" and saved["dev"]["f1"] == 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and "dev_per_type_PER_f1" in rows[-1] and "test_f1" in rows[-1]
    info = json.loads((out / "bertkit.json").read_text())
    assert info["head"] == "token_classification" and info["scheme"] == "bio"
    assert info["labels"] == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def test_predict_spans_cut_out_the_entity_text(toy):
    model = bertkit.load(toy[0])
    text = "  The  Alice Smith went to London,with Acme Corp.today\tand Bob ."
    [result] = bertkit.tag(model, [text])
    entities = result["entities"]
    assert [(e["entity"], e["type"]) for e in entities] == [
        ("Alice Smith", "PER"), ("London", "LOC"), ("Acme Corp", "ORG"), ("Bob", "PER")]
    for e in entities:
        assert text[e["start"] : e["end"]] == e["entity"]
        assert 1 / len(model.labels) < e["score"] <= 1.0  # a mean of argmax probabilities
    assert bertkit.tag(model, ["", "the"]) == [{"entities": []}, {"entities": []}]


def test_long_text_every_word_predicted(toy):
    """A text of ~150 words, ten windows at --max-len 16: every word gets a tag, every name is found."""
    model = bertkit.load(toy[0])
    rnd = random.Random(5)
    names = [rnd.choice(FIRST).capitalize() for _ in range(30)]
    text = " ".join(f"{name} went to the {rnd.choice(FILLER)}" for name in names)
    [result] = bertkit.tag(model, text)
    assert [e["entity"] for e in result["entities"]] == names
    assert all(text[e["start"] : e["end"]] == e["entity"] for e in result["entities"])
    words = text.split()
    data = TaggedWindows(model.tokenizer, [words], None, 16)
    assert len(data) >= 10
    [probs] = word_probabilities(model, data)
    assert probs.shape == (len(words), len(model.labels)) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_predict_cli_texts_and_file(toy, tmp_path):
    out = toy[0]
    r = run_cli("predict", "--model", out, "Carol met Bob in Rome", "globex inc", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [[(e["entity"], e["type"]) for e in row["entities"]] for row in rows] == [
        [("Carol", "PER"), ("Bob", "PER"), ("Rome", "LOC")], [("globex inc", "ORG")]]
    f = tmp_path / "in.txt"
    f.write_text("Dave Jones went to Paris\n\nthe Acme Corp\n")
    r = run_cli("predict", "--model", out, "--file", f, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [[e["entity"] for e in row["entities"]] for row in rows] == [["Dave Jones", "Paris"], [], ["Acme Corp"]]
    assert set(rows[0]["entities"][0]) == {"entity", "type", "start", "end", "score"}
    assert_cli_error(run_cli("predict", "--model", out, env=ONE_THREAD), "give one TEXT")


def test_transformers_loads_the_tagger_with_its_labels(toy):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertForTokenClassification.from_pretrained(toy[0]).eval()
    ours = bertkit.load(toy[0])
    assert hf.config.id2label[1] == "B-PER" and ours.labels[1] == "B-PER"
    batch = ours.tokenizer(["alice went to london", "the acme corp"])
    with torch.no_grad():
        ref = hf(input_ids=batch.input_ids, token_type_ids=batch.segment_ids, attention_mask=batch.attention_mask.long()).logits
        mine = ours(batch.input_ids, batch.segment_ids, batch.valid_lengths)
    mask = batch.attention_mask
    assert torch.allclose(ref[mask], mine[mask], atol=1e-5)
