"""Entity-level precision, recall and F1: the CoNLL shared task's `conlleval` definition.

An entity counts as found only when a predicted entity has exactly its words and its type.
Precision = found / predicted entities, recall = found / true entities, F1 their harmonic mean
(0 where undefined), summed over all sentences (micro-average) and per type. Accuracy is over
words. Tags may be IOB1 or BIO on either side: entities are read by `labels.entity_spans`.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from ..errors import BertkitError
from .labels import entity_spans


def _prf(found: int, predicted: int, true: int) -> dict[str, float]:
    p = found / predicted if predicted else 0.0
    r = found / true if true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def entity_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """{"f1", "precision", "recall", "accuracy", "per_type": {type: {"f1", "precision", "recall", "support"}}}."""
    if len(true_tags) != len(pred_tags):
        raise BertkitError(f"got {len(true_tags)} true sentences but {len(pred_tags)} predicted")
    found, predicted, true = Counter(), Counter(), Counter()
    right_words = total_words = 0
    for i, (t, p) in enumerate(zip(true_tags, pred_tags)):
        if len(t) != len(p):
            raise BertkitError(f"sentence {i + 1}: {len(t)} true tags but {len(p)} predicted")
        gold = set(entity_spans(t))
        guess = set(entity_spans(p))
        true.update(kind for kind, _, _ in gold)
        predicted.update(kind for kind, _, _ in guess)
        found.update(kind for kind, _, _ in gold & guess)
        right_words += sum(a == b for a, b in zip(t, p))
        total_words += len(t)
    scores = _prf(sum(found.values()), sum(predicted.values()), sum(true.values()))
    scores["accuracy"] = right_words / total_words if total_words else 0.0
    scores["per_type"] = {
        kind: {**_prf(found[kind], predicted[kind], true[kind]), "support": true[kind]}
        for kind in sorted(set(true) | set(predicted))
    }
    return scores


def tag_accuracy(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """{"accuracy"} over words: the metric of tag sets that are not entities (POS tags, say)."""
    pairs = [(a, b) for t, p in zip(true_tags, pred_tags) for a, b in zip(t, p)]
    return {"accuracy": sum(a == b for a, b in pairs) / len(pairs) if pairs else 0.0}
