"""The fast paths of the NTU embedding trainer equal the plain ones they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ntulm.kge.train as kge_train
from ntulm.kge import KGEConfig
from ntulm.kge.data import load_graph, loss_weights, split_edges
from ntulm.kge.model import EmbeddingTable, _side_grad, chunk_grads
from ntulm.kge.synthetic import write_planted_graph

CFG = dict(
    dimension=8,
    batch_size=300,
    num_batch_negs=20,
    num_uniform_negs=7,
    lr=0.1,
    compute_dtype="float32",
)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    write_planted_graph(d, num_users=40, num_hashtags=15, communities=3, edges_per_user=8)
    return d


def _train(graph_dir, **over) -> dict[str, torch.Tensor]:
    """Two epochs on the planted graph; the final tables and relation vectors."""
    cfg = KGEConfig(**{**CFG, **over})
    g = load_graph(graph_dir, cfg)
    train, w, _ = split_edges(g.edges, g.weight, 0.0, cfg.seed)
    trainer = kge_train.KGETrainer(cfg, {t: len(k) for t, k in g.keys.items()}, g.relations)
    for _ in range(2):
        trainer.train_epoch(train, loss_weights(w, cfg.weights))
    return {**{t: tab.weight for t, tab in trainer.tables.items()}, "rel": trainer.rel.weight}


def test_batched_chunks_equal_the_chunk_loop(graph, monkeypatch):
    # One chunk per matmul group (a Python loop over chunks) vs all chunks of a batch in one
    # batched matmul, last short chunk included (300 edges = 15 chunks of 20 per batch).
    monkeypatch.setattr(kge_train, "GROUP_EDGES", 1)
    loop = _train(graph)
    monkeypatch.setattr(kge_train, "GROUP_EDGES", 10**6)
    batched = _train(graph)
    for k in loop:
        torch.testing.assert_close(batched[k], loop[k], rtol=1e-5, atol=1e-5)
    assert loop["user"].abs().sum() > 0


def test_dense_gradient_buffer_equals_sparse_rows(graph, monkeypatch):
    # Small tables take the full-table gradient buffer and dense Adagrad; force the sparse
    # (unique rows) path and compare.
    dense = _train(graph)
    monkeypatch.setattr(EmbeddingTable, "dense_grads", lambda self, n: False)
    sparse = _train(graph)
    for k in dense:
        torch.testing.assert_close(dense[k], sparse[k], rtol=1e-5, atol=1e-6)


def test_dense_step_leaves_zero_gradient_rows_alone():
    gen = torch.Generator().manual_seed(0)
    a, b = EmbeddingTable(6, 4, 1.0, gen), EmbeddingTable(6, 4, 1.0, gen)
    b.weight, b.state = a.weight.clone(), a.state.clone() + 0.5
    a.state += 0.5
    grads = torch.zeros(6, 4)
    grads[[1, 4]] = torch.randn(2, 4, generator=gen)
    before = a.weight.clone()
    a.dense_step(grads, lr=0.1)
    b.step(torch.tensor([1, 4]), grads[[1, 4]], lr=0.1)
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.state, b.state)
    torch.testing.assert_close(a.weight[[0, 2, 3, 5]], before[[0, 2, 3, 5]])


@pytest.mark.parametrize("dim", [2, 1])
def test_logistic_loss_from_sigmoid_is_exact_at_extreme_scores(dim):
    # softplus via max(s, 0) - log σ(|s|): no overflow at +100, no cancellation at -100; the
    # logs taken of products of up to 100 factors (K = 270: blocks of 90), along either layout.
    base = torch.tensor([-100.0, -30.0, -17.0, -1e-3, 0.0, 2.0, 17.0, 30.0, 100.0])
    gen = torch.Generator().manual_seed(0)
    s = torch.cat([base, torch.randn(261, generator=gen) * 5]).view(1, 1, 270)
    s = torch.cat([s, -s])  # (C=2, B=1, K=270)
    if dim == 1:
        s = s.transpose(1, 2).contiguous()  # (C, K, B)
    w = torch.tensor([[1.5], [0.5]])
    empty = torch.zeros(0, dtype=torch.long)
    g = s.clone()
    loss, _ = _side_grad(g, dim, torch.zeros(2, 1), (empty,) * 3, w, w, "logistic", s.clone())
    expected = float((F.softplus(s.double()).sum(dim) * w.double()).sum())
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(g, torch.sigmoid(s) * w.unsqueeze(dim))


@pytest.mark.parametrize("loss_fn", ["logistic", "softmax"])
def test_bfloat16_matmuls_track_float32(loss_fn):
    # compute_dtype=bfloat16 runs every product of chunk_grads in bf16 (tables stay float32):
    # same gradients as float32 up to bf16 rounding, no dtype mix-ups on any path.
    gen = torch.Generator().manual_seed(0)
    C, B, U, d, n = 3, 6, 4, 8, 12
    lhs, rhs = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    rel = torch.randn(2, d, generator=gen)
    ids_l, ids_r = (
        torch.randint(n, (C, B + U), generator=gen),
        torch.randint(n, (C, B + U), generator=gen),
    )
    rel_ids, w = torch.randint(2, (C, B), generator=gen), torch.rand(C, B, generator=gen)
    args = (lhs[ids_l], rhs[ids_r], rel_ids, rel, ids_l, ids_r, w, loss_fn, "mean")
    full = chunk_grads(*args, compute_dtype=torch.float32)
    half = chunk_grads(*args, compute_dtype=torch.bfloat16)
    assert half.d_lhs.dtype == half.d_rhs.dtype == half.d_rel.dtype == torch.float32
    assert half.loss == pytest.approx(full.loss, rel=2e-2)
    for a, b in ((half.d_lhs, full.d_lhs), (half.d_rhs, full.d_rhs), (half.d_rel, full.d_rel)):
        assert float((a - b).norm() / b.norm()) < 3e-2
