"""Entity-level P/R/F1 (bertkit/tagging/metric.py) against seqeval, the reference implementation of
conlleval's definition: hand-made edge cases, random tag sequences, IOB1 against BIO input, and the
real predictions of a fine-tuned MiniLM on CoNLL-2003 dev (tests/fixtures, see its generator)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from bertkit.tagging.conll import read_conll
from bertkit.tagging.labels import entity_spans, to_bio
from bertkit.tagging.metric import entity_scores

seqeval = pytest.importorskip("seqeval.metrics")
pytestmark = pytest.mark.filterwarnings("ignore:.*ill-defined")  # seqeval on 0/0, which both score 0
FIXTURE = Path(__file__).parent / "fixtures" / "conll2003_testa_minilm_predictions.txt.gz"


def assert_same_as_seqeval(true, pred):
    ours = entity_scores(true, pred)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(true, pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(seqeval.recall_score(true, pred), abs=1e-12)
    assert ours["f1"] == pytest.approx(seqeval.f1_score(true, pred), abs=1e-12)
    assert ours["accuracy"] == pytest.approx(seqeval.accuracy_score(true, pred), abs=1e-12)
    report = seqeval.classification_report(true, pred, output_dict=True, zero_division=0)
    types = {k: v for k, v in report.items() if not k.endswith(" avg")}
    assert set(ours["per_type"]) == set(types)
    for kind, ref in types.items():
        mine = ours["per_type"][kind]
        assert (mine["precision"], mine["recall"], mine["f1"], mine["support"]) == pytest.approx(
            (ref["precision"], ref["recall"], ref["f1-score"], ref["support"]), abs=1e-12), kind
    return ours


EDGE_CASES = [
    # (true, predicted): each a list of sentences
    ([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]]),  # perfect
    ([["B-PER", "I-PER", "O"]], [["O", "I-PER", "O"]]),  # I- after O starts an entity (a shorter one: wrong)
    ([["O", "I-PER", "I-PER"]], [["O", "B-PER", "I-PER"]]),  # IOB1 gold, BIO prediction: the same entity
    ([["B-PER", "I-PER", "I-PER"]], [["B-PER", "I-LOC", "I-PER"]]),  # a type switch inside a span: three entities
    ([["B-ORG", "I-ORG"]], [["B-ORG", "B-ORG"]]),  # B- after B- of the same type: two entities
    ([["I-LOC", "B-LOC", "O"]], [["I-LOC", "I-LOC", "O"]]),  # IOB1's B- between adjacent same-type entities
    ([["O", "O"]], [["B-MISC", "O"]]),  # a false positive, no true entity of that type
    ([["B-MISC", "O"]], [["O", "O"]]),  # nothing predicted: precision 0/0 -> 0
    ([["B-PER"], ["I-PER", "O", "B-LOC"]], [["B-PER"], ["B-PER", "O", "I-LOC"]]),  # several sentences
    ([["B-PER", "I-PER"]], [["B-PER", "I-ORG"]]),  # the end word's type differs: the span is cut short
]


@pytest.mark.parametrize("true,pred", EDGE_CASES)
def test_edge_cases_equal_seqeval(true, pred):
    assert_same_as_seqeval(true, pred)


def test_spans_follow_conlleval_rules():
    assert entity_spans(["O", "I-PER", "I-PER", "B-PER", "I-LOC", "O", "B-ORG"]) == [
        ("PER", 1, 3), ("PER", 3, 4), ("LOC", 4, 5), ("ORG", 6, 7)]
    assert to_bio(["I-ORG", "I-ORG", "B-ORG", "O", "I-LOC", "I-PER"]) == ["B-ORG", "I-ORG", "B-ORG", "O", "B-LOC", "B-PER"]


def random_tags(rnd: random.Random, n: int) -> list[str]:
    return [rnd.choice(["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]) for _ in range(n)]


def test_random_sequences_equal_seqeval():
    rnd = random.Random(0)
    for _ in range(40):
        true = [random_tags(rnd, rnd.randint(1, 12)) for _ in range(rnd.randint(1, 8))]
        pred = [random_tags(rnd, len(t)) if rnd.random() < 0.7 else list(t) for t in true]
        assert_same_as_seqeval(true, pred)


def test_iob1_and_bio_gold_score_the_same(data_dir):
    """The real IOB1 dev file and its BIO conversion: the same entities, so the same scores for any
    prediction; and the BIO version passes seqeval's strict IOB2 reading unchanged."""
    sentences = read_conll(data_dir / "conll2003" / "eng.testa", 4)
    iob1 = [s.tags for s in sentences]
    bio = [to_bio(t) for t in iob1]
    assert iob1 != bio  # the file really is IOB1
    assert all(entity_spans(a) == entity_spans(b) for a, b in zip(iob1, bio))
    rnd = random.Random(1)
    pred = [[t if rnd.random() < 0.9 else rnd.choice(["O", "I-PER", "B-ORG", "I-MISC"]) for t in s] for s in bio]
    a, b = entity_scores(iob1, pred), entity_scores(bio, pred)
    assert (a["precision"], a["recall"], a["f1"]) == (b["precision"], b["recall"], b["f1"])
    from seqeval.scheme import IOB2

    strict = seqeval.f1_score(bio, bio, mode="strict", scheme=IOB2)
    assert strict == 1.0 and entity_scores(iob1, bio)["f1"] == 1.0
    assert_same_as_seqeval(iob1, pred)


def test_real_predictions_of_a_trained_model_equal_seqeval(data_dir):
    """CoNLL-2003 dev predicted by all-minilm-l6-v2 fine-tuned with bertkit (scripts/tagging_fixture.py)."""
    gold = [to_bio(s.tags) for s in read_conll(data_dir / "conll2003" / "eng.testa", 4)]
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        pred = [line.split() for line in f.read().splitlines()]
    assert len(pred) == len(gold) == 3250 and all(len(p) == len(g) for p, g in zip(pred, gold))
    ours = assert_same_as_seqeval(gold, pred)
    assert 0.5 < ours["f1"] < 1.0  # a real model: good, not perfect
