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

import functools
import math
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
    """Gradients of one group of chunks; candidate gradients include the in-batch part.

    ``d_lhs`` / ``d_rhs`` may be views of a :class:`Workspace` buffer: use them before the next
    :func:`chunk_grads` call with the same workspace."""

    loss: float
    d_lhs: torch.Tensor  # (C, K, d): grads of the lhs candidates (chunk rows, then uniform)
    d_rhs: torch.Tensor  # (C, K, d): grads of the rhs candidates
    d_rel: torch.Tensor  # (R, d): grads of the relation vectors, summed over the group


class Workspace:
    """Buffers reused from one group of chunks to the next (same sizes every group): the score
    and candidate-gradient buffers are written by ``bmm(out=)`` instead of fresh allocations
    and ``cat`` copies."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype)
        return buf[:n].view(shape)


@functools.cache
def _prod_block(k: int) -> int:
    """Largest divisor of ``k`` up to 100: products of that many factors in [0.5, 1] stay
    above 2^-100, far from float32 underflow."""
    return max(b for b in range(1, min(k, 100) + 1) if k % b == 0)


def _sum_log(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t.log().sum(dim)`` for ``t`` in [0.5, 1] (float32), as logs of products of blocks of
    up to 100 entries: one ``log`` per block instead of per entry (the log pass was the
    costliest element-wise pass of a step), and the sum is at least as exact."""
    k = t.shape[dim]
    b = _prod_block(k)
    blocks = t.unflatten(dim, (k // b, b)).prod(dim + 1)
    return blocks.log_().sum(dim)


def _side_grad(
    scores: torch.Tensor,  # (C, B, K) or (C, K, B) scores of one side, overwritten with G
    dim: int,  # the candidate dimension of ``scores``: 2 for (C, B, K), 1 for (C, K, B)
    pos: torch.Tensor,  # (C, B) positive scores
    mask_idx: tuple[torch.Tensor, ...],  # indices of excluded (positive-equal) candidates
    w: torch.Tensor | None,  # (C, B) edge loss weights (None: all 1)
    g_w: torch.Tensor | None,  # (C, B) factor of each edge's score gradients (None: 1)
    loss_fn: str,
    tmp: torch.Tensor,  # scratch of the shape of ``scores`` (float32 for bfloat16 scores)
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss of one side's negatives (a 0-d tensor; logistic: before the 1/K of
    ``neg_reduction=mean``), d loss / d scores in place (times ``g_w``) and, for softmax,
    d loss / d pos."""
    scores.index_put_(mask_idx, scores.new_tensor(-float("inf")))
    if loss_fn == "logistic":
        # -log σ(-s) = softplus(s); d/ds = σ(s). The positive term is added once, by the caller.
        # softplus(s) = max(s, 0) - log σ(|s|) and σ(|s|) = max(σ(s), 1 - σ(s)): the loss comes
        # from the σ(s) the gradient needs anyway, instead of a second transcendental pass
        # (F.softplus) over the scores; exact at any |s| (log of a number in [0.5, 1]).
        if tmp.dtype == scores.dtype:
            per_edge = torch.clamp(scores, min=0, out=tmp).sum(dim)  # (C, B)
            torch.sigmoid(scores, out=scores)
            torch.maximum(scores, torch.sub(scores.new_ones(()), scores, out=tmp), out=tmp)
        else:  # bfloat16 scores: the sums in float32
            per_edge = scores.clamp(min=0).sum(dim, dtype=tmp.dtype)
            torch.sigmoid(scores, out=scores)
            tmp.copy_(scores).sub_(0.5).abs_().add_(0.5)  # the same, in float32
        # tmp = σ(|s|), in [0.5, 1]
        per_edge -= _sum_log(tmp, dim)
        loss = (per_edge * w).sum() if w is not None else per_edge.sum()
        if g_w is not None:
            scores.mul_(g_w.unsqueeze(dim).to(scores.dtype))
        return loss, None
    # softmax (PBG): -log softmax of the positive among [pos, negatives], per side.
    full = scores.to(pos.dtype)  # the scores themselves in float32
    lse = torch.logaddexp(pos, torch.logsumexp(full, dim=dim))  # (C, B)
    loss = lse - pos
    full.sub_(lse.unsqueeze(dim)).exp_()  # softmax
    d_pos = (pos - lse).exp() - 1
    if w is not None:
        loss, d_pos = loss * w, d_pos * w
        full.mul_(w.unsqueeze(dim))
    if full is not scores:
        scores.copy_(full)
    return loss.sum(), d_pos


def _bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """``out = alpha · a @ b`` (batched) without a temporary where the dtypes agree."""
    if a.dtype != out.dtype:  # bfloat16 products into float32 gradients
        torch.mul(torch.bmm(a, b), alpha, out=out)
    elif alpha == 1.0:
        torch.bmm(a, b, out=out)
    else:  # beta=0: ``out`` is not read
        out.baddbmm_(a, b, beta=0.0, alpha=alpha)


def chunk_grads(
    cand_lhs: torch.Tensor,  # (C, K, d) lhs rows: the chunk's B edges, then U uniform negatives
    cand_rhs: torch.Tensor,  # (C, K, d) rhs rows, same layout
    rel_ids: torch.Tensor,  # (C, B) relation of each edge
    rel_table: torch.Tensor,  # (R, d) relation vectors
    cand_lhs_ids: torch.Tensor,  # (C, K) node ids, for masking positive-equal candidates
    cand_rhs_ids: torch.Tensor,  # (C, K)
    weight: torch.Tensor | None,  # (C, B) loss weight of each edge (None: all 1)
    loss_fn: str = "logistic",
    neg_reduction: str = "sum",
    compute_dtype: torch.dtype = torch.float32,
    masks: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None = None,
    workspace: Workspace | None = None,
) -> ChunkGrads:
    """Loss (to minimise: minus Eq. 2 for logistic) and gradients for a group of chunks.

    Edge ``i`` of chunk ``c`` is (cand_lhs[c, i], rel_table[rel_ids[c, i]], cand_rhs[c, i]);
    every candidate of the chunk (K = B + U per side) corrupts every edge of the chunk.
    ``masks``: the :func:`positive_equal` indices of (cand_lhs_ids, cand_rhs_ids) if already
    known; ``workspace``: reused buffers (the returned gradients are views of them).

    The in-batch blocks of the two sides share one product: with l, v the chunk's lhs / rhs
    rows, r_i the relation of edge i and M = l·vᵀ (B, B),

        rhs corruption  s_r[i, j] = l_i·v_j + l_i·r_i = M[i, j] + l_i·r_i
        lhs corruption  s_l[i, j] = (v_i + r_i)·l_j = M[j, i] + r_i·l_j

    and in the backward pass their score gradients meet in H = G_r + G_lᵀ (B, B): dl = H·v + ...,
    dv = Hᵀ·l + .... So the in-batch part costs 3 (B, B, d) matmuls instead of 6, a quarter of
    all the matmul work at B = U. The r-terms go through the R relation vectors (R ≪ B).

    Layout: s_r is (C, B, K) = l·[v; uniform rhs]ᵀ (one matmul, M its first B columns) and
    s_l is kept transposed, s_lᵀ (C, K, B) = [M + l·rᵀ; uniform lhs·(v + r)ᵀ], so that H is
    G_r's first B columns plus G_lᵀ's first B rows (no transposed copies) and the backward
    products are single matmuls straight into the (C, K, d) candidate gradients:
    [H | G_r,uni]·[v; uni_r] for the chunk's lhs rows, [H | G_r,uni]ᵀ·l for all rhs candidates."""
    C, B = rel_ids.shape
    K, d = cand_lhs.shape[1:]
    R = rel_table.shape[0]
    dt, cd = cand_lhs.dtype, compute_dtype
    ws = workspace if workspace is not None else Workspace()
    onehot = F.one_hot(rel_ids, R).to(dt)  # (C, B, R)
    rel = rel_table[rel_ids]  # (C, B, d)
    lhs, rhs = cand_lhs[:, :B], cand_rhs[:, :B]  # (C, B, d)
    q = rhs + rel  # (C, B, d) translated rhs: f = lhs · q
    pos = (lhs * q).sum(dim=2)  # (C, B)
    cl, cr, q_c = (x.to(cd) for x in (cand_lhs, cand_rhs, q))  # no copies in float32
    lhs_c, ul_c, oh_c = cl[:, :B], cl[:, B:], onehot.to(cd)

    # Scores. s_r = l·[v; uni_r]ᵀ + l_i·r_i; s_lᵀ[:B] = M + (l·Rᵀ)·onehotᵀ, s_lᵀ[B:] = uni_l·qᵀ.
    s_r = torch.bmm(lhs_c, cr.transpose(1, 2), out=ws.get("s_r", (C, B, K), cd))  # (C, B, K)
    l_rel = lhs_c @ rel_table.to(cd).T  # (C, B, R): l_j·r for every relation r
    s_lt = ws.get("s_lt", (C, K, B), cd)
    torch.baddbmm(s_r[:, :, :B], l_rel, oh_c.transpose(1, 2), out=s_lt[:, :B])  # (C, B, B)
    torch.bmm(ul_c, q_c.transpose(1, 2), out=s_lt[:, B:])  # (C, U, B)
    s_r.add_(l_rel.gather(2, rel_ids.unsqueeze(2)))  # + l_i·r_i

    # Element-wise: loss, and the score gradients G (in place). The 1/K of neg_reduction=mean
    # rides on the backward matmuls (alpha) when all weights are 1, else on the weights.
    a = 1.0 / K if loss_fn == "logistic" and neg_reduction == "mean" else 1.0
    g_w = None if weight is None else (weight * a if a != 1.0 else weight)
    alpha = a if weight is None else 1.0
    if masks is None:
        masks = positive_equal(cand_lhs_ids, B), positive_equal(cand_rhs_ids, B)
    (lc, li, lj), mask_r = masks
    tmp_r = ws.get("tmp", (C, B, K), torch.promote_types(cd, torch.float32))
    loss_r, dpos_r = _side_grad(s_r, 2, pos, mask_r, weight, g_w, loss_fn, tmp_r)
    tmp_l = tmp_r.view(C, K, B)
    loss_l, dpos_l = _side_grad(s_lt, 1, pos, (lc, lj, li), weight, g_w, loss_fn, tmp_l)
    loss = float(loss_r + loss_l) * a
    if loss_fn == "logistic":  # -log σ(p) = softplus(-p); d/dp = -σ(-p)
        # Counted once per edge as in Eq. 2 (PBG counts it once per corrupted side; on the IRA
        # graph the two give the same MRR within noise).
        pos_loss, d_pos = F.softplus(-pos), torch.sigmoid(-pos).neg_()  # (C, B)
        if weight is not None:
            pos_loss, d_pos = pos_loss * weight, d_pos * weight
        loss += float(pos_loss.sum())
    else:
        d_pos = dpos_r + dpos_l
    # s_r, s_lt now hold G_r, G_lᵀ (up to the factor alpha).
    g_r_sum = s_r.sum(dim=2).to(dt) * alpha  # (C, B) d loss / d (l_i·r_i)
    gl_onehot = torch.bmm(s_lt[:, :B], oh_c).to(dt) * alpha  # (C, B, R) G_l,inᵀ·onehot
    s_r[:, :, :B] += s_lt[:, :B]  # H = G_r,in + G_l,inᵀ (C, B, B)

    d_l = ws.get("d_l", (C, K, d), dt)  # lhs candidates
    d_r = ws.get("d_r", (C, K, d), dt)  # rhs candidates
    _bmm_into(d_l[:, :B], s_r, cr, alpha)  # H·v + G_r,uni·uni_r
    _bmm_into(d_l[:, B:], s_lt[:, B:], q_c, alpha)  # uniform lhs: G_l,uniᵀ·q
    _bmm_into(d_r, s_r.transpose(1, 2), lhs_c, alpha)  # [Hᵀ·l; G_r,uniᵀ·l]
    p = ws.get("p", (C, B, d), dt)  # (C, B, d) G_l,uni·uni_l: d q_i from the uniform lhs
    _bmm_into(p, s_lt[:, B:].transpose(1, 2), ul_c, alpha)
    # Terms through the relation vectors, with rel = onehot·R and q = v + rel:
    # d l_i += (G_l,inᵀ·onehot)_i·R + (g_r_sum_i + d_pos_i)·r_i + d_pos_i·v_i
    coef = gl_onehot + (g_r_sum + d_pos).unsqueeze(2) * onehot  # (C, B, R)
    d_pos = d_pos.unsqueeze(2)  # (C, B, 1)
    d_l[:, :B].baddbmm_(coef, rel_table.expand(C, R, d)).addcmul_(d_pos, rhs)
    d_r[:, :B].add_(p).addcmul_(d_pos, lhs)
    # d r = Σ_i coef_iᵀ·l_i + onehot_iᵀ·p_i (d q_i = p_i + G_l,in part; d (l_i·r_i) = g_r_sum_i)
    d_rel = (coef.transpose(1, 2) @ lhs + onehot.transpose(1, 2) @ p).sum(dim=0)  # (R, d)
    return ChunkGrads(loss=loss, d_lhs=d_l, d_rhs=d_r, d_rel=d_rel)


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
