"""NTU embedding model: loss computed by hand, gradients against autograd, row-wise Adagrad."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ntulm.kge.model import EmbeddingTable, RelationVectors, chunk_grads


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _tiny(rhs=(0, 1)):
    """Two edges in one chunk, no uniform negatives, d = 2, one relation r = [0.5, 0]."""
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    tags = torch.tensor([[1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    r = torch.tensor([0.5, 0.0], dtype=torch.float64)
    lid, rid = torch.tensor([[0, 1]]), torch.tensor([list(rhs)])  # (C=1, K=B=2)
    rel_ids, ones = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.float64)
    return users[lid], tags[rid], rel_ids, r.unsqueeze(0), lid, rid, ones


def test_logistic_loss_by_hand():
    # f = u·(v + r): positives 1.5 and 0; rhs corruptions 2.5 and 1; lhs corruptions 1 and 2.5.
    g = chunk_grads(*_tiny(), loss_fn="logistic", neg_reduction="sum", compute_dtype=torch.float64)
    expected = softplus(-1.5) + softplus(0.0) + 2 * softplus(2.5) + 2 * softplus(1.0)
    assert g.loss == pytest.approx(expected, rel=1e-12)
    # mean: each negative term weighs 1 / (B + U) = 1/2
    g = chunk_grads(*_tiny(), loss_fn="logistic", neg_reduction="mean", compute_dtype=torch.float64)
    expected = softplus(-1.5) + softplus(0.0) + (2 * softplus(2.5) + 2 * softplus(1.0)) / 2
    assert g.loss == pytest.approx(expected, rel=1e-12)


def test_softmax_loss_by_hand():
    g = chunk_grads(*_tiny(), loss_fn="softmax", compute_dtype=torch.float64)

    def nll(pos: float, neg: float) -> float:
        return -pos + math.log(math.exp(pos) + math.exp(neg))

    expected = nll(1.5, 2.5) + nll(0.0, 1.0) + nll(1.5, 1.0) + nll(0.0, 2.5)
    assert g.loss == pytest.approx(expected, rel=1e-12)


def test_negative_equal_to_positive_is_excluded():
    # Both edges point at hashtag 0: the rhs corruption of each is its own positive -> masked.
    g = chunk_grads(
        *_tiny(rhs=(0, 0)), loss_fn="logistic", neg_reduction="sum", compute_dtype=torch.float64
    )
    # positives: u0·(v0+r) = 1.5, u1·(v0+r) = 1; lhs corruptions: u1·(v0+r) = 1, u0·(v0+r) = 1.5
    expected = softplus(-1.5) + softplus(-1.0) + softplus(1.0) + softplus(1.5)
    assert g.loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "loss_fn,reduction", [("logistic", "sum"), ("logistic", "mean"), ("softmax", "sum")]
)
def test_gradients_match_autograd_and_reach_relations(loss_fn, reduction):
    torch.manual_seed(0)
    C, B, U, d, nl, nr = 2, 4, 3, 5, 7, 6
    Wl = torch.randn(nl, d, dtype=torch.float64, requires_grad=True)
    Wr = torch.randn(nr, d, dtype=torch.float64, requires_grad=True)
    R = torch.randn(2, d, dtype=torch.float64, requires_grad=True)
    lid, rid, rel = torch.randint(nl, (C, B)), torch.randint(nr, (C, B)), torch.randint(2, (C, B))
    ul, ur = torch.randint(nl, (C, U)), torch.randint(nr, (C, U))
    w = torch.rand(C, B, dtype=torch.float64)
    # Reference: the loss written with autograd-visible ops.
    u, q = Wl[lid], Wr[rid] + R[rel]
    pos = (u * q).sum(-1)
    cl, cr = torch.cat([lid, ul], 1), torch.cat([rid, ur], 1)
    s_r = torch.einsum("cbd,ckd->cbk", u, Wr[cr]) + (u * R[rel]).sum(-1, keepdim=True)
    s_l = torch.einsum("cbd,ckd->cbk", q, Wl[cl])
    m_r, m_l = rid.unsqueeze(2) == cr.unsqueeze(1), lid.unsqueeze(2) == cl.unsqueeze(1)
    if loss_fn == "logistic":
        sc = 1 / (B + U) if reduction == "mean" else 1.0
        neg = sum((F.softplus(s) * ~m).sum(2) for s, m in ((s_r, m_r), (s_l, m_l)))
        loss = ((F.softplus(-pos) + sc * neg) * w).sum()
    else:
        loss = 0
        for s, m in ((s_r, m_r), (s_l, m_l)):
            full = torch.cat([pos.unsqueeze(2), s.masked_fill(m, -math.inf)], 2)
            loss = loss + ((torch.logsumexp(full, 2) - pos) * w).sum()
    gl, gr, gR = torch.autograd.grad(loss, [Wl, Wr, R])

    with torch.no_grad():
        g = chunk_grads(Wl[cl], Wr[cr], rel, R, cl, cr, w, loss_fn, reduction, torch.float64)
    assert g.loss == pytest.approx(float(loss.detach()), rel=1e-10)
    mine_l = torch.zeros_like(gl).index_add_(0, cl.reshape(-1), g.d_lhs.reshape(-1, d))
    mine_r = torch.zeros_like(gr).index_add_(0, cr.reshape(-1), g.d_rhs.reshape(-1, d))
    mine_R = g.d_rel
    torch.testing.assert_close(mine_l, gl)
    torch.testing.assert_close(mine_r, gr)
    torch.testing.assert_close(mine_R, gR)
    assert mine_R.abs().sum(1).min() > 0  # every relation vector gets a gradient


def test_rowwise_adagrad_touches_only_given_rows():
    table = EmbeddingTable(5, 3, 1e-3, torch.Generator().manual_seed(0))
    before = table.weight.clone()
    grads = torch.tensor([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0]])
    table.update(torch.tensor([2, 2]), grads, lr=0.1)  # repeated id: grads summed, one step
    g = torch.tensor([2.0, 2.0, 2.0])
    state = g.pow(2).mean()
    assert table.state[2] == pytest.approx(float(state))
    torch.testing.assert_close(table.weight[2], before[2] - 0.1 * g / state.sqrt())
    untouched = [0, 1, 3, 4]
    torch.testing.assert_close(table.weight[untouched], before[untouched])
    assert table.state[untouched].abs().sum() == 0


def test_relation_operator_none_is_not_updated():
    rel = RelationVectors(2, 3, torch.tensor([True, False]))
    rel.update(torch.ones(2, 3), lr=0.1)
    assert rel.weight[0].abs().sum() > 0 and rel.weight[1].abs().sum() == 0
