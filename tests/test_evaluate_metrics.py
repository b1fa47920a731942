"""Downstream metrics on examples small enough to compute by hand."""

import math

import numpy as np
import pytest

from ntulm.evaluate import (
    average_precision,
    compute_metrics,
    percent_change,
    perplexity,
    perplexity_bits,
    recall_at_k,
    retrieval_map,
)
from ntulm.evaluate.overlap import split_by_overlap

# Binary: predictions [0, 1, 1, 1] for truth [0, 0, 1, 1].
Y2 = np.array([0, 0, 1, 1])
P2 = np.array([[0.9, 0.1], [0.25, 0.75], [0.3, 0.7], [0.2, 0.8]])


def test_binary_classification_metrics_by_hand():
    got, notes = compute_metrics(["macro_f1", "accuracy", "precision", "auc"], Y2, P2)
    # class 0: P=1, R=1/2, F1=2/3; class 1: P=2/3, R=1, F1=4/5
    assert got["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert got["precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert got["accuracy"] == pytest.approx(0.75)
    # positive scores 0.7, 0.8 vs negative 0.1, 0.75: 3 of 4 pairs ordered right
    assert got["auc"] == pytest.approx(0.75)
    assert notes == []


def test_multiclass_auc_skipped_when_a_class_is_absent():
    y = np.array([0, 1, 0])
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])
    got, notes = compute_metrics(["auc", "accuracy"], y, p)
    assert got["auc"] is None and "absent" in notes[0] and "[2]" in notes[0]
    assert got["accuracy"] == 1.0
    y3 = np.array([0, 1, 2])
    p3 = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    assert compute_metrics(["auc"], y3, p3)[0]["auc"] == pytest.approx(1.0)


def test_recall_at_k_by_hand_with_ties_by_class_id():
    y = np.array([1, 0, 1])
    s = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.2, 0.6]])
    # row 0: true class ranked 2nd; row 1: 3rd; row 2: tie 0/1 for 2nd -> class 0 first, 1 is 3rd
    assert recall_at_k(y, s, 1) == 0.0
    assert recall_at_k(y, s, 2) == pytest.approx(1 / 3)
    assert recall_at_k(y, s, 3) == 1.0
    got, _ = compute_metrics(["recall@2"], y, s)
    assert got["recall@2"] == pytest.approx(1 / 3)


def test_average_precision_by_hand():
    assert average_precision([1, 0, 1]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0, 1, 1, 0]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert math.isnan(average_precision([0, 0]))


# Four unit vectors at 0, ~37, ~53 and 90 degrees; labels A B A B.
X4 = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
L4 = np.array([0, 1, 0, 1])


def test_retrieval_map_by_hand():
    # query 0 ranks 1,2,3 -> [0,1,0] AP 1/2; query 1 ranks 2,0,3 -> [0,0,1] AP 1/3;
    # query 2 ranks 1,3,0 -> [0,0,1] AP 1/3; query 3 ranks 2,1,0 -> [0,1,0] AP 1/2
    value, n = retrieval_map(X4 * 3.0, L4)  # scale does not matter: cosine
    assert value == pytest.approx(5 / 12) and n == 4
    value, n = retrieval_map(X4, L4, query_mask=np.array([True, False, False, False]))
    assert value == pytest.approx(0.5) and n == 1


def test_retrieval_map_leaves_out_the_query_authors_posts():
    # authors u (posts 0, 1) and v (2, 3): query 0 ranks 2,3 -> AP 1; query 1 ranks 2,3 -> 1/2;
    # query 2 ranks 1,0 -> 1/2; query 3 ranks 1,0 -> AP 1
    value, _ = retrieval_map(X4, L4, groups=["u", "u", "v", "v"])
    assert value == pytest.approx(3 / 4)


def test_multilabel_metrics():
    y = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.9, 0.2], [0.4, 0.6], [0.7, 0.4]])
    got, _ = compute_metrics(["accuracy", "map", "auc"], y, p, kind="multilabel")
    assert got["accuracy"] == pytest.approx(2 / 3)  # row 2 misses label 1
    # label 0: ranking rows 0,2,1 -> [1,1,0] AP 1; label 1: rows 1,2,0 -> [1,1,0] AP 1
    assert got["map"] == pytest.approx(1.0)
    assert got["auc"] == pytest.approx(1.0)


def test_perplexity_in_bits():
    assert perplexity_bits(4.344 * math.log(2)) == pytest.approx(4.344)
    assert perplexity(math.log(16)) == pytest.approx(16.0)


def test_overlap_split_and_percent_change_by_hand():
    y = np.array([0, 1, 1, 0])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.6, 0.4]])  # right, wrong, right, right
    flags = np.array([True, False, True, False])
    out, sizes, notes = split_by_overlap(
        flags, lambda idx: compute_metrics(["accuracy"], y[idx], p[idx])
    )
    assert out["metrics"]["accuracy"] == 0.75
    assert out["overlap"]["accuracy"] == 1.0  # posts 0, 2
    assert out["non_overlap"]["accuracy"] == 0.5  # posts 1, 3
    assert sizes == {"test": 4, "overlap": 2, "non_overlap": 2} and notes == []
    out, sizes, notes = split_by_overlap(
        np.ones(4, bool), lambda idx: compute_metrics(["accuracy"], y[idx], p[idx])
    )
    assert out["non_overlap"] == {} and "n too small" in notes[0]

    model = {"metrics": {"macro_f1": 0.6, "auc": None}, "overlap": {"macro_f1": 0.55}}
    base = {"metrics": {"macro_f1": 0.5, "auc": 0.7}, "overlap": {"macro_f1": 0.5}}
    change = percent_change(model, base)
    assert change["metrics"]["macro_f1"] == pytest.approx(20.0)
    assert change["metrics"]["auc"] is None
    assert change["overlap"]["macro_f1"] == pytest.approx(10.0)
    assert change["non_overlap"] == {}
