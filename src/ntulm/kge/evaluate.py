"""Link prediction on held-out edges: MRR and Hits@1/10/50 per relation.

Protocol (the same for the trained model, a random-embedding baseline and PBG's output):
for each held-out edge (u, r, v) the true rhs v is ranked among the candidate rhs nodes for
(u, r, ?) and the true lhs u among the candidate lhs nodes for (?, r, v), by the score
u·(v + r). Candidates are all nodes of the type (``num_candidates=0``) or one seeded uniform
sample of ``num_candidates`` nodes per relation and side. The ranking is *filtered*: other
known true edges (train and held-out) are not counted as competitors. Ties count half.
The metrics of a relation average both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HITS_AT = (1, 10, 50)
# Below this many held-out edges a relation's MRR is mostly noise (one edge moves it by up to
# 1/n): tiny corpora give MRR 1.0 or nan from a handful of edges. Warned about, with n.
MIN_RELIABLE_EDGES = 50


@dataclass
class EdgeSet:
    lhs: torch.Tensor  # (E,) int64
    rel: torch.Tensor  # (E,) int64 relation index
    rhs: torch.Tensor  # (E,) int64

    def __len__(self) -> int:
        return self.lhs.shape[0]


class _KnownIndex:
    """Known partners of (query node, relation): sorted keys for ``searchsorted`` ranges."""

    def __init__(self, query: torch.Tensor, rel: torch.Tensor, partner: torch.Tensor, n_query: int):
        key = rel * n_query + query
        order = torch.argsort(key, stable=True)
        self.keys, self.partners, self.n_query = key[order], partner[order], n_query

    def pairs(self, query: torch.Tensor, rel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in the query batch, known partner) for every known partner of each query."""
        key = rel * self.n_query + query
        lo = torch.searchsorted(self.keys, key, right=False)
        hi = torch.searchsorted(self.keys, key, right=True)
        counts = hi - lo
        rows = torch.repeat_interleave(torch.arange(len(query)), counts)
        starts = torch.repeat_interleave(lo - torch.cumsum(counts, 0) + counts, counts)
        idx = starts + torch.arange(int(counts.sum()))
        return rows, self.partners[idx]


def _ranks(
    queries: torch.Tensor,  # (Q, d) query vectors (u for rhs ranking, v + r for lhs ranking)
    offset: torch.Tensor,  # (Q,) score term added to every candidate (u·r for rhs ranking)
    true_ids: torch.Tensor,  # (Q,)
    cand_table: torch.Tensor,  # (n, d) full table of the candidate type
    sample: torch.Tensor | None,  # (S,) candidate ids, or None = all
    known_rows: torch.Tensor,  # (P,) query row of each known pair
    known_ids: torch.Tensor,  # (P,) known partner of each pair
) -> torch.Tensor:
    cands = cand_table if sample is None else cand_table[sample]
    scores = queries @ cands.T + offset.unsqueeze(1)  # (Q, n or S)
    if sample is None:
        true = scores.gather(1, true_ids.unsqueeze(1)).squeeze(1)
        col = known_ids
        in_set = torch.ones_like(known_ids, dtype=torch.bool)
    else:
        true = (queries * cand_table[true_ids]).sum(1) + offset
        where = torch.full((cand_table.shape[0],), -1, dtype=torch.long)
        where[sample] = torch.arange(len(sample))
        col = where[known_ids].clamp(min=0)
        in_set = where[known_ids] >= 0
    n_gt = (scores > true.unsqueeze(1)).sum(1)
    n_ge = (scores >= true.unsqueeze(1)).sum(1)
    ks = scores[known_rows, col]
    kt = true[known_rows]
    kn_gt = torch.zeros_like(n_gt).index_add_(0, known_rows, ((ks > kt) & in_set).long())
    kn_ge = torch.zeros_like(n_gt).index_add_(0, known_rows, ((ks >= kt) & in_set).long())
    gt = n_gt - kn_gt
    ties = (n_ge - kn_ge) - gt
    return 1.0 + gt.double() + ties.clamp(min=0).double() / 2


def _summary(ranks: torch.Tensor) -> dict[str, float]:
    if len(ranks) == 0:
        return {"mrr": float("nan"), **{f"hits@{k}": float("nan") for k in HITS_AT}, "n": 0}
    out = {"mrr": float((1.0 / ranks).mean())}
    for k in HITS_AT:
        out[f"hits@{k}"] = float((ranks <= k).double().mean())
    out["n"] = len(ranks)
    return out


def link_prediction(
    tables: dict[str, torch.Tensor],
    relation_vectors: torch.Tensor,  # (R, d); zero rows for operator "none"
    relations: list[tuple[str, str, str]],  # (name, lhs type, rhs type) per relation index
    test: EdgeSet,
    known: EdgeSet,
    num_candidates: int = 0,
    max_edges: int = 0,
    seed: int = 0,
    batch: int = 512,
) -> dict:
    """Filtered MRR / Hits@k per relation (both sides averaged) and over all relations, each with
    ``n`` (ranks: two per edge) and ``edges`` (held-out edges evaluated); ``warnings`` names the
    relations with fewer than :data:`MIN_RELIABLE_EDGES` edges."""
    gen = torch.Generator().manual_seed(seed + 7919)
    out: dict = {}
    all_ranks = []
    few: list[str] = []
    for r, (name, lt, rt) in enumerate(relations):
        L, Rt = tables[lt].float(), tables[rt].float()
        rvec = relation_vectors[r].float()
        sel = (test.rel == r).nonzero().squeeze(1)
        if max_edges and len(sel) > max_edges:
            sel = sel[torch.randperm(len(sel), generator=gen)[:max_edges]]
        u, v = test.lhs[sel], test.rhs[sel]
        kr = known.rel == r
        rhs_index = _KnownIndex(known.lhs[kr], known.rel[kr], known.rhs[kr], L.shape[0])
        lhs_index = _KnownIndex(known.rhs[kr], known.rel[kr], known.lhs[kr], Rt.shape[0])
        samp_r = samp_l = None
        if num_candidates:
            samp_r = torch.randint(Rt.shape[0], (num_candidates,), generator=gen).unique()
            samp_l = torch.randint(L.shape[0], (num_candidates,), generator=gen).unique()
        ranks_r, ranks_l = [], []
        for s in range(0, len(sel), batch):
            ub, vb = u[s : s + batch], v[s : s + batch]
            qu = L[ub]  # (Q, d)
            rows, ids = rhs_index.pairs(ub, r)
            ranks_r.append(_ranks(qu, qu @ rvec, vb, Rt, samp_r, rows, ids))
            qv = Rt[vb] + rvec  # (Q, d)
            rows, ids = lhs_index.pairs(vb, r)
            ranks_l.append(_ranks(qv, torch.zeros(len(vb)), ub, L, samp_l, rows, ids))
        rr = torch.cat(ranks_r) if ranks_r else torch.zeros(0, dtype=torch.double)
        rl = torch.cat(ranks_l) if ranks_l else torch.zeros(0, dtype=torch.double)
        both = torch.cat([rr, rl])
        all_ranks.append(both)
        out[name] = {**_summary(both), "edges": len(sel), "rhs": _summary(rr), "lhs": _summary(rl)}
        if len(sel) < MIN_RELIABLE_EDGES:
            few.append(f"{name}: {len(sel)} held-out edge(s)")
    out["overall"] = _summary(torch.cat(all_ranks) if all_ranks else torch.zeros(0))
    out["overall"]["edges"] = sum(out[name]["edges"] for name, _, _ in relations)
    # a list, not a dict: readers take the dict entries as relations
    out["warnings"] = (
        [
            f"fewer than {MIN_RELIABLE_EDGES} held-out edges, so MRR and Hits@k are unreliable "
            f"(nan: none at all): {'; '.join(few)}"
        ]
        if few
        else []
    )
    out["protocol"] = (
        "filtered ranking of the true rhs among "
        + ("all nodes of the type" if not num_candidates else f"{num_candidates} sampled nodes")
        + " and likewise the true lhs; ties count half; relation metrics average both sides"
    )
    return out
