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
