"""Embedding tables, relation vectors and the chunked negative-sampling loss with its gradients.

Score (paper Eq. 1): ``f(u, r, v) = u·(v + r)``. A batch is cut into chunks of ``B =
num_batch_negs`` edges. Within a chunk every edge is corrupted on both sides, against the chunk's
own nodes (in-batch negatives) and ``U = num_uniform_negs`` nodes drawn uniformly per chunk, so the
scores of a side are one batched matmul ``(C, B, d) x (C, d, B + U)``. Candidates equal to the
positive node (the diagonal, duplicates, unlucky uniform draws) are masked out.

The gradients are written out by hand instead of going through autograd: the same three matmuls
per side, but no graph bookkeeping and no (C, B, B + U) temporaries beyond the score buffer, which
is reused for its own gradient. ``tests/test_kge_model.py`` checks them against autograd.

Tables sit behind :class:`EmbeddingTable` (``rows`` / ``update``), the one place that reads or
writes node vectors, so a sharded or partitioned table can replace it for graphs that outgrow
one machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ADAGRAD_EPS = 1e-10


class EmbeddingTable:
    """One node type's vectors with row-wise Adagrad (one accumulator per row, as in PBG).

    A step touches only the rows it is given: ``state[i] += mean(g_i²)``,
    ``row_i -= lr · g_i / (sqrt(state[i]) + eps)``."""

    def __init__(self, num_rows: int, dim: int, init_scale: float, generator: torch.Generator):
        self.weight = torch.randn(num_rows, dim, generator=generator) * init_scale  # (n, d)
        self.state = torch.zeros(num_rows)  # (n,)

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Copy of the rows ``ids`` (any shape) -> ids.shape + (d,)."""
        return self.weight[ids]

    def unique(self, ids: torch.Tensor) -> torch.Tensor:
        """Sorted distinct ids of ``ids``: a mark array when the table is small next to ``ids``
        (O(n + k), much faster than sorting), else ``torch.unique``."""
        ids = ids.reshape(-1)
        if self.num_rows <= 4 * ids.numel():
            mark = torch.zeros(self.num_rows, dtype=torch.bool)
            mark[ids] = True
            return mark.nonzero().squeeze(1)
        return torch.unique(ids)

    def positions(self, uniq: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Map ids -> their index in the sorted ``uniq``: a dense lookup array for small tables,
        binary search otherwise."""
        if self.num_rows <= 4 * uniq.numel():
            where = torch.empty(self.num_rows, dtype=torch.long)
            where[uniq] = torch.arange(uniq.numel())
            return lambda ids: where[ids]
        return lambda ids: torch.searchsorted(uniq, ids)

    def step(self, uniq: torch.Tensor, grads: torch.Tensor, lr: float) -> None:
        """One Adagrad step on distinct rows ``uniq`` (u,) with summed gradients (u, d)."""
        state = self.state[uniq] + grads.pow(2).mean(dim=1)
        self.state[uniq] = state
        self.weight[uniq] -= (lr / (state.sqrt() + ADAGRAD_EPS)).unsqueeze(1) * grads

    def dense_grads(self, num_ids: int) -> bool:
        """Whether a step touching ``num_ids`` ids should use a full-table gradient buffer.

        When the ids cover the table (small tables, big batches) a dense buffer needs no
        ``unique`` / position lookup and the step is one pass over the table."""
        return self.num_rows <= 4 * num_ids

    def dense_step(self, grads: torch.Tensor, lr: float) -> None:
        """Row-wise Adagrad with a full-table gradient (n, d). Rows whose gradient is zero do
        not move (state += 0, weight -= 0): the same as :meth:`step` on the touched rows."""
        # ‖g_i‖² / d instead of g.pow(2).mean(1): no (n, d) temporary.
        self.state += torch.linalg.vector_norm(grads, dim=1).square_().div_(grads.shape[1])
        self.weight.addcdiv_(grads, (self.state.sqrt() + ADAGRAD_EPS).unsqueeze(1), value=-lr)

    def update(self, ids: torch.Tensor, grads: torch.Tensor, lr: float) -> None:
        """Sum ``grads`` (k, d) of possibly repeated ``ids`` (k,) per row and take one step."""
        uniq = self.unique(ids)
        g = torch.zeros(uniq.shape[0], grads.shape[1], dtype=grads.dtype)
        scatter_rows(g, torch.searchsorted(uniq, ids), grads)  # (u, d)
        self.step(uniq, g, lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "state": self.state}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.weight = sd["weight"].clone()
        self.state = sd["state"].clone()


def scatter_rows(out: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
    """``out[index[k]] += rows[k]`` for (k, d) rows (any leading shape), in place.

    ``scatter_add_`` with an expanded index: about 4x faster than ``index_add_`` on CPU."""
    rows = rows.reshape(-1, out.shape[1])
    out.scatter_add_(0, index.reshape(-1, 1).expand(-1, out.shape[1]), rows)


class RelationVectors:
    """Translation vectors ``r`` (R, d) with dense element-wise Adagrad."""

    def __init__(self, num_relations: int, dim: int, translating: torch.Tensor):
        self.weight = torch.zeros(num_relations, dim)
        self.state = torch.zeros(num_relations, dim)
        self.translating = translating  # (R,) bool: operator "translation" (else "none": r = 0)

    def update(self, grads: torch.Tensor, lr: float) -> None:
        grads = grads * self.translating.unsqueeze(1)
        self.state += grads.pow(2)
        self.weight -= lr * grads / (self.state.sqrt() + ADAGRAD_EPS)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "state": self.state}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.weight = sd["weight"].clone()
        self.state = sd["state"].clone()


@dataclass
class ChunkGrads:
    """Gradients of one group of chunks; candidate gradients include the in-batch part."""

    loss: float
    d_lhs: torch.Tensor  # (C, K, d): grads of the lhs candidates (chunk rows, then uniform)
    d_rhs: torch.Tensor  # (C, K, d): grads of the rhs candidates
    d_rel: torch.Tensor  # (R, d): grads of the relation vectors, summed over the group


def _side_grad(
    scores: torch.Tensor,  # (C, B, K) negative scores, overwritten with their gradient
    pos: torch.Tensor,  # (C, B) positive scores
    mask_idx: tuple[torch.Tensor, ...],  # indices of excluded (positive-equal) candidates
    w: torch.Tensor,  # (C, B) edge loss weights
    loss_fn: str,
    neg_scale: float,
) -> tuple[float, torch.Tensor | None]:
    """Loss of one side's negatives, d loss / d scores (in place) and d loss / d pos (softmax)."""
    scores.index_put_(mask_idx, scores.new_tensor(-float("inf")))
    if loss_fn == "logistic":
        # -log σ(-s) = softplus(s); d/ds = σ(s). The positive term is added once, by the caller.
        # softplus(s) = max(s, 0) - log σ(|s|) and σ(|s|) = 0.5 + |σ(s) - 0.5|: the loss comes
        # from the σ(s) the gradient needs anyway, instead of a second transcendental pass
        # (F.softplus) over the (C, B, K) scores; as exact (log of a number in [0.5, 1]).
        # bf16 scores: sums in bf16 (fp32 accumulation inside; the loss is only reported).
        per_edge = scores.clamp(min=0).sum(dim=2).to(w.dtype)  # (C, B)
        torch.sigmoid(scores, out=scores)
        log_sig_abs = (scores - 0.5).abs_().add_(0.5).log_().sum(dim=2).to(w.dtype)
        loss = ((per_edge - log_sig_abs) * w).sum() * neg_scale
        scores.mul_((w * neg_scale).unsqueeze(2).to(scores.dtype))
        return float(loss), None
    # softmax (PBG): -log softmax of the positive among [pos, negatives], per side.
    full = scores.to(pos.dtype)
    lse = torch.logaddexp(pos, torch.logsumexp(full, dim=2))  # (C, B)
    loss = ((lse - pos) * w).sum()
    full.sub_(lse.unsqueeze(2)).exp_().mul_(w.unsqueeze(2))  # softmax · w
    scores.copy_(full)
    d_pos = ((pos - lse).exp() - 1) * w
    return float(loss), d_pos


def chunk_grads(
    cand_lhs: torch.Tensor,  # (C, K, d) lhs rows: the chunk's B edges, then U uniform negatives
    cand_rhs: torch.Tensor,  # (C, K, d) rhs rows, same layout
    rel_ids: torch.Tensor,  # (C, B) relation of each edge
    rel_table: torch.Tensor,  # (R, d) relation vectors
    cand_lhs_ids: torch.Tensor,  # (C, K) node ids, for masking positive-equal candidates
    cand_rhs_ids: torch.Tensor,  # (C, K)
    weight: torch.Tensor,  # (C, B) loss weight of each edge
    loss_fn: str = "logistic",
    neg_reduction: str = "sum",
    compute_dtype: torch.dtype = torch.float32,
) -> ChunkGrads:
    """Loss (to minimise: minus Eq. 2 for logistic) and gradients for a group of chunks.

    Edge ``i`` of chunk ``c`` is (cand_lhs[c, i], rel_table[rel_ids[c, i]], cand_rhs[c, i]);
    every candidate of the chunk (K = B + U per side) corrupts every edge of the chunk.

    The in-batch blocks of the two sides share one product: with l, v the chunk's lhs / rhs
    rows, r_i the relation of edge i and M = l·vᵀ (B, B),

        rhs corruption  s_r[i, j] = l_i·v_j + l_i·r_i = M[i, j] + l_i·r_i
        lhs corruption  s_l[i, j] = (v_i + r_i)·l_j = M[j, i] + r_i·l_j

    and in the backward pass their score gradients meet in H = G_r + G_lᵀ (B, B): dl = H·v + ...,
    dv = Hᵀ·l + .... So the in-batch part costs 3 (B, B, d) matmuls instead of 6, a quarter of
    all the matmul work at B = U. The r-terms go through the R relation vectors (R ≪ B)."""
    C, B = rel_ids.shape
    K, d = cand_lhs.shape[1:]
    R = rel_table.shape[0]
    dt, cd = cand_lhs.dtype, compute_dtype
    onehot = F.one_hot(rel_ids, R).to(dt)  # (C, B, R)
    rel = rel_table[rel_ids]  # (C, B, d)
    lhs, uni_l = cand_lhs[:, :B], cand_lhs[:, B:]  # (C, B, d), (C, U, d)
    rhs, uni_r = cand_rhs[:, :B], cand_rhs[:, B:]
    q = rhs + rel  # (C, B, d) translated rhs: f = lhs · q
    pos = (lhs * q).sum(dim=2)  # (C, B)
    lhs_c, rhs_c, q_c, ul_c, ur_c = (x.to(cd) for x in (lhs, rhs, q, uni_l, uni_r))
    m = torch.bmm(lhs_c, rhs_c.transpose(1, 2))  # (C, B, B) M[i, j] = l_i·v_j
    lr = (lhs * rel).sum(dim=2).to(cd).unsqueeze(2)  # (C, B, 1) l_i·r_i
    r_dot_l = torch.bmm(onehot.to(cd), rel_table.to(cd) @ lhs_c.transpose(1, 2))  # r_i·l_j
    s_r = torch.cat([m, torch.bmm(lhs_c, ur_c.transpose(1, 2))], dim=2).add_(lr)  # (C, B, K)
    s_l = torch.cat([m.transpose(1, 2) + r_dot_l, torch.bmm(q_c, ul_c.transpose(1, 2))], dim=2)

    neg_scale = 1.0 / K if loss_fn == "logistic" and neg_reduction == "mean" else 1.0
    mask_r = positive_equal(cand_rhs_ids, B)
    mask_l = positive_equal(cand_lhs_ids, B)
    loss_r, dpos_r = _side_grad(s_r, pos, mask_r, weight, loss_fn, neg_scale)
    loss_l, dpos_l = _side_grad(s_l, pos, mask_l, weight, loss_fn, neg_scale)
    loss = loss_r + loss_l
    if loss_fn == "logistic":  # -log σ(p) = softplus(-p); d/dp = -σ(-p)
        # Counted once per edge as in Eq. 2 (PBG counts it once per corrupted side; on the IRA
        # graph the two give the same MRR within noise).
        loss += float((F.softplus(-pos) * weight).sum())
        d_pos = -torch.sigmoid(-pos) * weight
    else:
        d_pos = dpos_r + dpos_l
    # s_r, s_l now hold d loss / d scores: G_r, G_l.
    g_r_in, g_r_u = s_r[:, :, :B], s_r[:, :, B:]
    g_l_in, g_l_u = s_l[:, :, :B], s_l[:, :, B:]
    h = g_r_in + g_l_in.transpose(1, 2)  # (C, B, B)
    g_r_sum = s_r.sum(dim=2).to(dt).unsqueeze(2)  # (C, B, 1) d loss / d (l_i·r_i)
    d_pos = d_pos.unsqueeze(2)
    # lhs rows: as edge lhs (s_r: Σ_j G_r[i, j] (v_j + r_i)) and as in-batch lhs candidates
    # (s_l: Σ_i G_l[i, j] (v_i + r_i)).
    d_l = torch.baddbmm(torch.bmm(h, rhs_c), g_r_u, ur_c).to(dt)  # (C, B, d)
    gl_t_onehot = torch.bmm(g_l_in.transpose(1, 2), onehot.to(cd)).to(dt)  # (C, B, R)
    d_l += gl_t_onehot @ rel_table + g_r_sum * rel + d_pos * q
    # rhs rows: as edge rhs (through q) and as in-batch rhs candidates (s_r).
    p = torch.bmm(g_l_u, ul_c).to(dt)  # (C, B, d) uniform part of d loss / d q_i
    d_r = torch.bmm(h.transpose(1, 2), lhs_c).to(dt) + p + d_pos * lhs
    # relation vectors: d r_i = d q_i + G_r-row-sum_i · l_i; d q_i = (G_l_in · l)_i + p_i + ...
    oh_t = onehot.transpose(1, 2)  # (C, R, B)
    d_rel = torch.bmm(torch.bmm(oh_t.to(cd), g_l_in), lhs_c).to(dt)  # (C, R, d)
    d_rel += torch.bmm(oh_t, p + (d_pos + g_r_sum) * lhs)
    d_cand_r = torch.cat([d_r, torch.bmm(g_r_u.transpose(1, 2), lhs_c).to(dt)], dim=1)
    d_cand_l = torch.cat([d_l, torch.bmm(g_l_u.transpose(1, 2), q_c).to(dt)], dim=1)
    return ChunkGrads(loss=loss, d_lhs=d_cand_l, d_rhs=d_cand_r, d_rel=d_rel.sum(dim=0))


def positive_equal(cand_ids: torch.Tensor, B: int) -> tuple[torch.Tensor, ...]:
    """Indices (c, i, j) where candidate j of chunk c is the node of edge i itself.

    cand_ids (C, K) holds the chunk's own B nodes first. Found by sorting instead of a dense
    (C, B, K) comparison: the diagonal plus repeated nodes and unlucky uniform draws."""
    C, K = cand_ids.shape
    n = int(cand_ids.max()) + 1 if cand_ids.numel() else 1
    base = torch.arange(C).unsqueeze(1) * n
    keys, order = (base + cand_ids).reshape(-1).sort()
    pos_keys = (base + cand_ids[:, :B]).reshape(-1)  # (C*B,)
    lo = torch.searchsorted(keys, pos_keys)
    hi = torch.searchsorted(keys, pos_keys, right=True)
    counts = hi - lo
    rows = torch.repeat_interleave(torch.arange(C * B), counts)
    starts = torch.repeat_interleave(lo - torch.cumsum(counts, 0) + counts, counts)
    flat = order[starts + torch.arange(int(counts.sum()))]  # c * K + j
    return rows // B, rows % B, flat % K


def score(lhs: torch.Tensor, rhs: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 1 for aligned rows: f(u, r, v) = u·(v + r) -> (...,)."""
    return (lhs * (rhs + rel)).sum(dim=-1)
