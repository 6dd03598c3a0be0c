"""The official SQuAD metric (v2.0's script, which gives the v1.1 numbers on v1.1 data), written anew.

Answers are compared after normalisation: lower case, punctuation removed, the articles a/an/the
removed, whitespace collapsed. Exact match is normalised equality; F1 is over normalised word
bags. Each question takes its best score over its gold answers (an unanswerable question's only
gold answer is ""). With no-answer scores (`na_probs`: a probability, or run_squad's null odds),
a prediction whose score exceeds `na_prob_thresh` counts as "no answer"; `best_exact`/`best_f1`
are the scores at the best such threshold, found by sweeping the questions in score order.

Numbers equal the official script's, HasAns_/NoAns_ included. Where that script crashes
(predictions missing for some questions: a KeyError), this scores the questions that have a
prediction, as the script's own `total` already does, and says how many were missing.
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


class MissingPredictionsWarning(UserWarning):
    pass


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str) -> float:
    gold_words = normalize_answer(gold).split() if gold else []
    pred_words = normalize_answer(pred).split() if pred else []
    if not gold_words or not pred_words:
        return float(gold_words == pred_words)
    same = sum((Counter(gold_words) & Counter(pred_words)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_words), same / len(gold_words)
    return 2 * precision * recall / (precision + recall)


def gold_answers(dataset: list) -> dict[str, list[str]]:
    """Question id -> its gold answer texts, from a SQuAD file's "data" list (file order).
    An empty list means unanswerable."""
    return {str(qa["id"]): [a["text"] for a in qa.get("answers") or []]
            for article in dataset for p in article["paragraphs"] for qa in p["qas"]}


def _best_threshold(preds, scores, na_probs, has_answer):
    """Sweep questions by no-answer score (ties in na_probs' order); the best total and its threshold."""
    n_scored = len(scores)
    current = best = sum(1 for q in scores if not has_answer[q])
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        else:
            current += -1 if preds[qid] else 0
        if current > best:
            best, best_thresh = current, na_probs[qid]
    return 100.0 * best / n_scored, best_thresh


def evaluate(dataset: list, preds: dict[str, str], na_probs: dict[str, float] | None = None,
             na_prob_thresh: float = 1.0) -> dict:
    """The official script's result dict for `preds` (question id -> answer text) on `dataset`."""
    gold = gold_answers(dataset)
    has_answer = {q: bool(a) for q, a in gold.items()}
    missing = [q for q in gold if q not in preds]
    if missing:
        warnings.warn(f"{len(missing)} of {len(gold)} questions have no prediction (e.g. {missing[0]}); "
                      f"scoring the {len(gold) - len(missing)} that do", MissingPredictionsWarning, stacklevel=2)
    exact_raw, f1_raw = {}, {}
    for qid, answers in gold.items():
        if qid not in preds:
            continue
        answers = [a for a in answers if normalize_answer(a)] or [""]
        exact_raw[qid] = max(exact_match(a, preds[qid]) for a in answers)
        f1_raw[qid] = max(f1_score(a, preds[qid]) for a in answers)
    if not exact_raw:
        raise ValueError("no question of the data file has a prediction")
    given_na = na_probs is not None
    if na_probs is None:
        na_probs = {q: 0.0 for q in preds}
    absent = [q for q in exact_raw if q not in na_probs]
    if absent:
        raise KeyError(f"no no-answer score for question {absent[0]} ({len(absent)} missing)")

    def thresholded(raw):
        return {q: float(not has_answer[q]) if na_probs[q] > na_prob_thresh else s for q, s in raw.items()}

    exact, f1 = thresholded(exact_raw), thresholded(f1_raw)

    def summary(qids):
        return {"exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
                "f1": 100.0 * sum(f1[q] for q in qids) / len(qids), "total": len(qids)}

    result = summary(list(exact))
    for prefix, want in (("HasAns", True), ("NoAns", False)):
        if any(has_answer[q] == want for q in gold):
            qids = [q for q in exact if has_answer[q] == want]
            if qids:
                result.update({f"{prefix}_{k}": v for k, v in summary(qids).items()})
    if given_na:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(preds, exact_raw, na_probs, has_answer)
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(preds, f1_raw, na_probs, has_answer)
    return result
