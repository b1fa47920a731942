"""The social contrastive objective (TwHIN-BERT, Zhang et al. 2023): ``L = L_MLM + lambda
L_social`` with ``social_weight = lambda`` (0 by default: the paper's MLM only).

- :func:`mine_pairs`: socially similar posts from the KGE artifact alone. A post's vector is its
  mean known NTU vector (:func:`~ntulm.lm.data.ntu_vectors` over known NTUs); its positives are
  its ``k`` nearest posts by cosine, never itself and never a post of the same author (those
  would teach the model to recognise authors, which the NTU token already does). Exact top-k
  with torch up to ``exact_max`` posts, a faiss HNSW index above (approximate).
- :func:`nt_xent`: NT-Xent (SimCLR) over a batch of B pairs: each of the 2B embeddings has its
  partner as positive and the other 2B - 2 as negatives, cosine similarity over temperature tau.
- :func:`text_embeddings`: the loss is taken on the word-piece mean of the model run on the
  *text alone* (no NTU tokens), so the social signal also reaches posts without known NTUs.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ntulm.lm.data import post_ntu_rows

if TYPE_CHECKING:
    from ntulm.kge import NTUEmbeddings
    from ntulm.lm.model import NTULM
    from ntulm.posts import Post

log = logging.getLogger(__name__)


def post_social_vectors(
    posts: Sequence[Post], ntu: NTUEmbeddings, types: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each post's known NTU vectors, (N, D) float32 (zeros where none), and whether it
    had any, (N,) bool."""
    vecs = np.zeros((len(posts), ntu.dim), dtype=np.float32)
    known = np.zeros(len(posts), dtype=bool)
    for i, post in enumerate(posts):
        rows = [(t, r) for t, r in post_ntu_rows(post, ntu, types) if r is not None]
        if rows:
            vecs[i] = np.mean([ntu.tables[t][r] for t, r in rows], axis=0, dtype=np.float64)
            known[i] = True
    return vecs, known


def author_keys(posts: Sequence[Post], ntu: NTUEmbeddings) -> list[Hashable]:
    """One key per post's author: its user row where known, else its reference; a post without
    author gets a key of its own (it matches nobody)."""
    keys: list[Hashable] = []
    for i, p in enumerate(posts):
        if p.author is None:
            keys.append(("none", i))
            continue
        row = ntu.lookup_user(p.author)
        keys.append(("row", row) if row is not None else ("ref", p.author.id, p.author.handle))
    return keys


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk_exact(
    x: np.ndarray, groups: np.ndarray, k: int, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of each row among rows of *another* group (so never itself): indices
    (N, k) int64 (-1 where fewer exist) and similarities (N, k) float32."""
    u = torch.from_numpy(_unit(x).astype(np.float32))
    g = torch.from_numpy(groups)
    n = u.shape[0]
    kk = min(k, n)
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    for s in range(0, n, chunk):
        block = u[s : s + chunk] @ u.T  # (C, N)
        block[g[s : s + chunk, None] == g[None, :]] = -torch.inf  # self and same author
        v, i = torch.topk(block, kk, dim=1)
        i[torch.isinf(v)] = -1
        idx[s : s + chunk, :kk], sim[s : s + chunk, :kk] = i.numpy(), v.numpy()
    return idx, sim


def topk_faiss(
    x: np.ndarray, groups: np.ndarray, k: int, hnsw_m: int = 32, ef_search: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_exact` with a faiss HNSW index (inner product of unit vectors): search more
    neighbours for rows whose first hits are mostly of their own group, until each has ``k`` or
    all rows were searched."""
    import faiss

    u = np.ascontiguousarray(_unit(x).astype(np.float32))
    n, d = u.shape
    index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = max(ef_search, 2 * k)
    index.add(u)
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.full((n, k), -np.inf, dtype=np.float32)
    todo = np.arange(n)
    want = min(n, 2 * k + 1)
    while len(todo):
        index.hnsw.efSearch = max(index.hnsw.efSearch, want)
        v, i = index.search(u[todo], want)
        left = []
        for r, row in enumerate(todo):
            ok = (i[r] >= 0) & (groups[np.maximum(i[r], 0)] != groups[row])
            hits, vals = i[r][ok][:k], v[r][ok][:k]
            idx[row, : len(hits)], sim[row, : len(hits)] = hits, vals
            if len(hits) < k and want < n:
                left.append(row)
        todo = np.asarray(left, dtype=np.int64)
        want = min(n, want * 4)
    return idx, sim


def mine_pairs(
    posts: Sequence[Post],
    ntu: NTUEmbeddings,
    types: Sequence[str],
    k: int = 5,
    exact_max: int = 20_000,
) -> np.ndarray:
    """Positives of each post: (N, k) int64 indices into ``posts``, -1 where there are none
    (posts without a known NTU have none and are no one's positive)."""
    vecs, known = post_social_vectors(posts, ntu, types)
    keys = author_keys(posts, ntu)
    codes = {key: c for c, key in enumerate(dict.fromkeys(keys))}
    groups = np.array([codes[key] for key in keys], dtype=np.int64)
    sub = np.flatnonzero(known)
    out = np.full((len(posts), k), -1, dtype=np.int64)
    if len(sub) < 2:
        log.warning("social pairs: %d post(s) with a known NTU, no pairs mined", len(sub))
        return out
    search = topk_exact if len(sub) <= exact_max else topk_faiss
    idx, _ = search(vecs[sub], groups[sub], k)
    out[sub] = np.where(idx >= 0, sub[np.maximum(idx, 0)], -1)
    n_with = int((out[:, 0] >= 0).sum())
    log.info(
        "social pairs: %d of %d posts have positives (%s top-%d)",
        n_with,
        len(posts),
        "exact" if search is topk_exact else "faiss HNSW",
        k,
    )
    return out


def pick_partners(
    pairs: np.ndarray, idx: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One positive per post of the batch ``idx``, drawn among its mined ones: (anchors, partners)
    as indices into the mined posts; posts without positives are left out."""
    cand = pairs[idx]  # (B, k)
    n_ok = (cand >= 0).sum(1)
    has = n_ok > 0
    pick = (rng.random(len(idx)) * np.maximum(n_ok, 1)).astype(np.int64)  # positives come first
    return idx[has], cand[has, pick[has]]


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of B positive pairs ``(a_i, b_i)``, (B, H) each: the mean over all 2B embeddings
    of ``-log softmax`` of the partner's cosine / tau against the 2B - 1 others."""
    z = nn.functional.normalize(torch.cat([a, b]).float(), dim=1)  # (2B, H)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim.fill_diagonal_(-torch.inf)  # not itself
    n = a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(sim.device)
    return nn.functional.cross_entropy(sim, target)


def text_embeddings(
    model: NTULM, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Word-piece mean of the model run on the text alone (no NTU tokens): (B, H)."""
    hidden, mask = model.hidden_states(input_ids, attention_mask, None, text_only=True)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
