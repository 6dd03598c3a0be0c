"""The GLUE metrics, as the GLUE benchmark reports them (numpy only, no scikit-learn / scipy).

accuracy; F1 of the positive class (label index 1) for MRPC and QQP; Matthews correlation for
CoLA; Pearson and Spearman correlation (average ranks for ties) for STS-B. Values are fractions
in [0, 1] (correlations in [-1, 1]); a metric that is undefined (no variance, no positives)
is 0.0, as scikit-learn returns.
"""

from __future__ import annotations

import numpy as np


def accuracy(labels, preds) -> float:
    labels, preds = np.asarray(labels), np.asarray(preds)
    return float((labels == preds).mean()) if len(labels) else 0.0


def f1(labels, preds, positive: int = 1) -> float:
    labels, preds = np.asarray(labels) == positive, np.asarray(preds) == positive
    tp = float((labels & preds).sum())
    fp = float((~labels & preds).sum())
    fn = float((labels & ~preds).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(labels, preds) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004); equals the binary formula for 2 classes."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    classes = np.union1d(labels, preds)
    index = {c: i for i, c in enumerate(classes)}
    c = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for t, p in zip(labels, preds):
        c[index[t], index[p]] += 1
    t_sum, p_sum = c.sum(axis=1), c.sum(axis=0)
    n, correct = c.sum(), np.trace(c)
    cov_ytyp = correct * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    denom = np.sqrt(cov_ytyt * cov_ypyp)
    return float(cov_ytyp / denom) if denom > 0 else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def rankdata(x) -> np.ndarray:
    """Ranks from 1, ties getting the average of the ranks they span (scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))


# metric set name -> function(labels, predictions) -> {metric: value}
def classification_metrics(kind: str):
    def compute(labels, preds) -> dict[str, float]:
        out = {"accuracy": accuracy(labels, preds)}
        if kind == "f1":
            out["f1"] = f1(labels, preds)
        elif kind == "mcc":
            out = {"mcc": matthews_corrcoef(labels, preds), **out}
        return out

    return compute


def regression_metrics(labels, preds) -> dict[str, float]:
    return {"pearson": pearson(labels, preds), "spearman": spearman(labels, preds)}


METRIC_SETS = {
    "accuracy": classification_metrics("accuracy"),
    "f1": classification_metrics("f1"),  # F1 and accuracy (MRPC, QQP)
    "mcc": classification_metrics("mcc"),  # Matthews correlation (CoLA), accuracy beside it
    "correlation": regression_metrics,  # Pearson and Spearman (STS-B)
}


def compute_metrics(metric_set: str, labels, preds) -> dict[str, float]:
    return METRIC_SETS[metric_set](labels, preds)
