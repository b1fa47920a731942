"""One optimizer step of the trainer equals a straightforward reference step.

The reference scores every chunk directly (no shared in-batch block, no transposed layouts, no
workspace, no per-batch masks, no log-of-products), takes the gradients with autograd in float64
and applies row-wise Adagrad by the formula. Any optimisation of ``KGETrainer.train_batch`` that
changed the maths (negatives, masking, weights, the 1/K of ``neg_reduction=mean``, the relation
terms, the Adagrad update) fails here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ntulm.kge.train as kge_train
from ntulm.kge import KGEConfig
from ntulm.kge.data import load_graph, split_edges
from ntulm.kge.model import ADAGRAD_EPS
from ntulm.kge.synthetic import write_planted_graph

B, U = 20, 7


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    write_planted_graph(d, num_users=40, num_hashtags=15, communities=3, edges_per_user=8)
    return d


def reference_step(trainer, edges, weight, batch, gen):
    """(loss, tables, relation vectors) after one step, computed the plain way in float64."""
    cfg = trainer.config
    rel0 = trainer.relations[int(edges.rel[batch[0]])]
    lt, rt = trainer.tables[rel0.lhs], trainer.tables[rel0.rhs]
    n_chunks = -(-len(batch) // B)
    uni_l = torch.randint(lt.num_rows, (n_chunks, U), generator=gen)  # the trainer's draws
    uni_r = torch.randint(rt.num_rows, (n_chunks, U), generator=gen)
    Wl = lt.weight.double().requires_grad_()
    Wr = rt.weight.double().requires_grad_()
    R = trainer.rel.weight.double().requires_grad_()
    lhs, rhs, rel, w = edges.lhs[batch], edges.rhs[batch], edges.rel[batch], weight[batch].double()
    loss = torch.zeros((), dtype=torch.float64)
    for c in range(n_chunks):
        e = slice(c * B, (c + 1) * B)
        cl, cr = torch.cat([lhs[e], uni_l[c]]), torch.cat([rhs[e], uni_r[c]])  # (K,)
        u, v, r = Wl[lhs[e]], Wr[rhs[e]], R[rel[e]]  # (b, d)
        pos = (u * (v + r)).sum(1)
        s_r = (u.unsqueeze(1) * (Wr[cr].unsqueeze(0) + r.unsqueeze(1))).sum(2)  # (b, K)
        s_l = (Wl[cl].unsqueeze(0) * (v + r).unsqueeze(1)).sum(2)  # (b, K)
        keep_r = rhs[e].unsqueeze(1) != cr.unsqueeze(0)  # a candidate equal to the node: out
        keep_l = lhs[e].unsqueeze(1) != cl.unsqueeze(0)
        if cfg.loss_fn == "logistic":
            scale = 1.0 / len(cl) if cfg.neg_reduction == "mean" else 1.0
            neg = (F.softplus(s_r) * keep_r).sum(1) + (F.softplus(s_l) * keep_l).sum(1)
            loss = loss + ((F.softplus(-pos) + scale * neg) * w[e]).sum()
        else:
            for s, keep in ((s_r, keep_r), (s_l, keep_l)):
                full = torch.cat([pos.unsqueeze(1), s.masked_fill(~keep, float("-inf"))], 1)
                loss = loss + ((torch.logsumexp(full, 1) - pos) * w[e]).sum()
    g_l, g_r, g_R = torch.autograd.grad(loss, [Wl, Wr, R])

    def adagrad(weight, state, g):
        touched = g.abs().sum(1) > 0
        state = state.double() + torch.where(touched, g.pow(2).mean(1), 0.0)
        return weight.detach() - cfg.lr * g / (state.sqrt() + ADAGRAD_EPS).unsqueeze(1)

    tables = {rel0.lhs: adagrad(Wl, lt.state, g_l), rel0.rhs: adagrad(Wr, rt.state, g_r)}
    g_R = g_R * trainer.rel.translating.unsqueeze(1)
    state_R = trainer.rel.state.double() + g_R.pow(2)
    lr_R = cfg.effective_relation_lr
    rvec = R.detach() - lr_R * g_R / (state_R.sqrt() + ADAGRAD_EPS)
    return float(loss.detach()), tables, rvec


@pytest.mark.parametrize(
    "loss_fn,reduction,weights,group",
    [
        ("logistic", "mean", "ones", 40),  # the default method: 1/K on the matmuls
        ("logistic", "mean", "random", 40),  # per-edge weights folded into the score gradients
        ("logistic", "sum", "random", 10**6),  # one group per batch
        ("softmax", "sum", "random", 20),  # one chunk per group
    ],
)
def test_train_batch_equals_reference_step(graph, monkeypatch, loss_fn, reduction, weights, group):
    monkeypatch.setattr(kge_train, "GROUP_EDGES", group)
    cfg = KGEConfig(
        dimension=8,
        batch_size=150,  # 7 full chunks of 20 and a short one of 10
        num_batch_negs=B,
        num_uniform_negs=U,
        lr=0.1,
        init_scale=0.5,  # scores far from 0: masking and weights show in the loss
        loss_fn=loss_fn,
        neg_reduction=reduction,
        compute_dtype="float32",
    )
    g = load_graph(graph, cfg)
    edges, w, _ = split_edges(g.edges, g.weight, 0.0, cfg.seed)
    if weights == "random":
        w = torch.rand(len(edges), generator=torch.Generator().manual_seed(1)) + 0.5
    else:
        w = torch.ones(len(edges))
    trainer = kge_train.KGETrainer(cfg, {t: len(k) for t, k in g.keys.items()}, g.relations)
    gen = torch.Generator().manual_seed(3)
    batches = trainer._batches(edges, gen)
    assert len(batches[0]) == 150
    trainer.rel.weight += torch.randn(trainer.rel.weight.shape, generator=gen)  # r != 0
    for tab in trainer.tables.values():  # Adagrad state from earlier steps
        tab.state += torch.rand(tab.num_rows, generator=gen)
    before = {t: tab.weight.clone() for t, tab in trainer.tables.items()}
    gen_ref = torch.Generator()
    gen_ref.set_state(gen.get_state())
    loss_ref, tables_ref, rvec_ref = reference_step(trainer, edges, w, batches[0], gen_ref)

    loss = trainer.train_batch(edges, w, batches[0], gen)

    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for t, ref in tables_ref.items():
        torch.testing.assert_close(trainer.tables[t].weight.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trainer.rel.weight.double(), rvec_ref, rtol=1e-5, atol=1e-5)
    for t, tab in trainer.tables.items():  # the step did move the rows
        assert float((tab.weight - before[t]).abs().max()) > 1e-2
