"""Link-prediction ranks on a case small enough to rank by hand."""

from __future__ import annotations

import pytest
import torch

from ntulm.kge.evaluate import EdgeSet, link_prediction


def test_filtered_ranks_by_hand():
    tables = {
        "user": torch.tensor([[1.0, 0.0], [2.0, 0.0]]),
        "hashtag": torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]),
    }
    rel = torch.zeros(1, 2)
    test = EdgeSet(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    known = EdgeSet(torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([1, 2]))
    out = link_prediction(tables, rel, [("authored", "user", "hashtag")], test, known)
    m = out["authored"]
    # rhs: u0 scores h2 (3) > h1 (2) > h0 (1), but (u0, h2) is a known edge: filtered rank 1.
    assert m["rhs"]["mrr"] == pytest.approx(1.0)
    # lhs: h1 is scored 4 by u1 and 2 by u0; (u1, h1) is not known: rank 2.
    assert m["lhs"]["mrr"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(0.75) and m["hits@1"] == pytest.approx(0.5)
    assert m["hits@10"] == 1.0 and out["overall"]["n"] == 2


def test_ties_count_half():
    tables = {"user": torch.ones(1, 2), "hashtag": torch.ones(5, 2)}
    test = EdgeSet(torch.tensor([0]), torch.tensor([0]), torch.tensor([3]))
    out = link_prediction(tables, torch.zeros(1, 2), [("r", "user", "hashtag")], test, test)
    assert out["r"]["rhs"]["mrr"] == pytest.approx(1 / 3)  # 5 tied: mean rank 3


def test_few_held_out_edges_are_counted_and_named():
    g = torch.Generator().manual_seed(0)
    tables = {"user": torch.randn(70, 4, generator=g), "hashtag": torch.randn(70, 4, generator=g)}
    rels = [("authored", "user", "hashtag"), ("retweeted", "user", "hashtag")]
    lhs, rhs = torch.arange(63), torch.arange(63).flip(0)
    rel = torch.cat([torch.zeros(60, dtype=torch.long), torch.ones(3, dtype=torch.long)])
    test = EdgeSet(lhs, rel, rhs)
    out = link_prediction(tables, torch.zeros(2, 4), rels, test, test)
    assert out["authored"]["edges"] == 60 and out["authored"]["n"] == 120  # n: two ranks/edge
    assert out["retweeted"]["edges"] == 3 and out["overall"]["edges"] == 63
    (warning,) = out["warnings"]
    assert "fewer than 50 held-out edges" in warning and "retweeted: 3 held-out edge(s)" in warning
    assert "authored" not in warning
    many = link_prediction(tables, torch.zeros(2, 4), rels[:1], test, test)
    assert many["warnings"] == []


def test_report_table_shows_edges_not_ranks_and_marks_few():
    from ntulm.pipeline.report import kge_table

    m = {"mrr": 1.0, "hits@1": 1.0, "hits@10": 1.0, "hits@50": 1.0}
    lp = {
        "authored": {**m, "n": 6, "edges": 3},
        "overall": {**m, "n": 6, "edges": 3},
        "warnings": ["fewer than 50 held-out edges ...: authored: 3 held-out edge(s)"],
    }
    table = kge_table({"link_prediction": lp, "random_baseline": {}})
    assert "| authored | 3 (few) | 1.0000 |" in table and "| overall | 3 | 1.0000 |" in table
    assert "Warning: fewer than 50 held-out edges" in table
