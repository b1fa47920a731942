"""Fusion designs beyond the paper, small modules used by :class:`~ntulm.lm.model.NTULM`:

- :class:`TypedNTUTokens` (``ntu_tokens=per_type``): one NTU token per type instead of the one
  averaged vector of paper §3.2. Type ``k`` gets ``s_k = W_k e_k + b_k + t_k`` (its own projection
  and a learned type embedding ``t_k``). A type absent from the post (no known NTU of it) gets a
  learned unknown vector ``u_k + t_k`` (``ntu_absent=unknown``) or no token (``drop``: masked out
  of attention). Absent rows arrive as NaN rows of ``e`` (see :func:`ntulm.lm.data.ntu_type_vectors`).
- :func:`drop_ntus` (``ntu_dropout``): hide a post's NTUs (or one type's) during fine-tuning, so
  the model also learns to read the text alone.
- :class:`GatePooling` (``pooling_gate``): ``g = sigmoid(w [m; z] + b)``, embedding
  ``g m + (1 - g) z`` of the word-piece mean ``m`` and the NTU-slot state ``z``, (B, H).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TypedNTUTokens(nn.Module):
    """Per-type projections, type embeddings and unknown vectors: (B, K, D) -> (B, K, H), (B, K)."""

    def __init__(self, n_types: int, ntu_dim: int, hidden: int, absent: str = "unknown"):
        super().__init__()
        if absent not in ("unknown", "drop"):
            raise ValueError(f"absent: {absent!r} is not 'unknown' or 'drop'")
        self.absent = absent
        self.weight = nn.Parameter(torch.empty(n_types, hidden, ntu_dim))  # W_k
        self.bias = nn.Parameter(torch.zeros(n_types, hidden))  # b_k
        self.type_embedding = nn.Parameter(torch.zeros(n_types, hidden))  # t_k
        self.unknown = nn.Parameter(torch.zeros(n_types, hidden))  # u_k
        for k in range(n_types):  # as nn.Linear initialises each projection
            nn.init.kaiming_uniform_(self.weight[k], a=5**0.5)
        nn.init.normal_(self.type_embedding, std=0.02)
        nn.init.normal_(self.unknown, std=0.02)

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[2])

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``e``: (B, K, D), NaN rows where the type is absent. Returns the tokens (B, K, H) and
        their attention mask (B, K) (all ones unless ``absent='drop'``)."""
        present = ~torch.isnan(e).any(dim=-1)  # (B, K)
        e = torch.where(present[..., None], e, 0.0).to(self.weight.dtype)  # no NaN in the graph
        s = torch.einsum("bkd,khd->bkh", e, self.weight) + self.bias  # (B, K, H)
        s = torch.where(present[..., None], s, self.unknown.expand_as(s)) + self.type_embedding
        if self.absent == "drop":
            return s, present.long()
        return s, torch.ones_like(present, dtype=torch.long)


class GatePooling(nn.Module):
    """``g m + (1 - g) z`` with ``g = sigmoid(w [m; z] + b)``: (B, H), (B, H) -> (B, H)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.gate = nn.Linear(2 * hidden, 1)
        nn.init.zeros_(self.gate.weight)  # starts as the plain average of m and z
        nn.init.zeros_(self.gate.bias)

    def forward(self, words: torch.Tensor, ntu_state: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([words, ntu_state], dim=-1)))  # (B, 1)
        return g * words + (1 - g) * ntu_state


def drop_ntus(
    e: np.ndarray, p: float, rng: np.random.Generator, mean: np.ndarray | None = None
) -> np.ndarray:
    """A copy of ``e`` with NTUs hidden with probability ``p``: (B, D) rows become ``mean`` (the
    table mean, as for a post without NTUs), (B, K, D) type rows become NaN (absent)."""
    e = e.copy()
    if p <= 0:
        return e
    if e.ndim == 2:
        if mean is None:
            raise ValueError("drop_ntus: mean mode needs the table mean")
        e[rng.random(e.shape[0]) < p] = mean
    else:
        e[rng.random(e.shape[:2]) < p] = np.nan
    return e
