"""The GLUE metrics against values computed by hand."""

import math

import pytest

from bertkit.tasks.metrics import accuracy, compute_metrics, f1, matthews_corrcoef, pearson, rankdata, spearman

LABELS = [1, 1, 0, 0, 1]
PREDS = [1, 0, 1, 0, 1]  # tp 2, fn 1, fp 1, tn 1


def test_accuracy():
    assert accuracy(LABELS, PREDS) == pytest.approx(3 / 5)
    assert accuracy([], []) == 0.0


def test_f1_of_the_positive_class():
    # precision 2/3, recall 2/3 -> F1 2/3
    assert f1(LABELS, PREDS) == pytest.approx(2 / 3)
    assert f1([0, 0], [0, 0]) == 0.0  # no positives at all: undefined -> 0
    assert f1([1, 0, 1, 1], [1, 1, 1, 1]) == pytest.approx(2 * 3 / (2 * 3 + 1))


def test_matthews_binary():
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2-1)/sqrt(3*3*2*2) = 1/6
    assert matthews_corrcoef(LABELS, PREDS) == pytest.approx(1 / 6)
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert matthews_corrcoef([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0  # constant predictions


def test_matthews_multiclass():
    # confusion [[2,1,0],[0,1,1],[0,0,1]]: c=4, s=6, t=(3,2,1), p=(2,2,2)
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    num = 4 * 6 - (3 * 2 + 2 * 2 + 1 * 2)
    den = math.sqrt((36 - (9 + 4 + 1)) * (36 - (4 + 4 + 4)))
    assert matthews_corrcoef(labels, preds) == pytest.approx(num / den)


def test_pearson():
    # x = [1,2,3], y = [1,2,4]: dx = [-1,0,1], dy = [-4/3,-1/3,5/3]; r = 3 / sqrt(2 * 14/3)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(28 / 3))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_spearman_with_ties():
    assert list(rankdata([10, 20, 20, 30])) == [1, 2.5, 2.5, 4]
    # ranks x = [1,2.5,2.5,4], y = [1,3,2,4] -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear


def test_metric_sets_as_glue_reports_them():
    assert set(compute_metrics("accuracy", LABELS, PREDS)) == {"accuracy"}
    assert set(compute_metrics("f1", LABELS, PREDS)) == {"f1", "accuracy"}
    assert set(compute_metrics("mcc", LABELS, PREDS)) == {"mcc", "accuracy"}
    assert set(compute_metrics("correlation", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])) == {"pearson", "spearman"}
