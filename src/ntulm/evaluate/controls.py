"""Negative controls for NTU models: the same fine-tuned model, fed NTU vectors that carry no
information about the post. A gain of NTULM over BERT counts only where it also clears both.

- ``shuffled``: each post gets *another* post's e_ntu: a seeded permutation of the e_ntu rows
  within the split (train, validation or test of one task), with no fixed point (Sattolo's
  algorithm: one cycle through all posts), so the set of vectors is unchanged but the pairing of
  post and NTUs is broken;
- ``mean``: every post gets the NTU table mean (the paper's vector for an unknown NTU), so the
  token carries nothing.

A model with one NTU token per type (``ntu_tokens: per_type``) takes (N, K, D) rows, one per type:
``shuffled`` gives each post all K rows of the same other post (the same permutation as its
appended rows, so that the pairing is broken once, consistently), absent types included; ``mean``
gives every type of every post the table mean, so each of the K tokens carries nothing.

The pipeline passes these rows to :func:`ntulm.lm.encode.encode` (``ntus=``) in place of the
posts' own; variants declare them with ``control`` and ``model_of`` (``pipeline/config.py``).
A control's gap to its model shows what the post's own NTUs add; on TweetEval, whose posts have
no author, "NTULM author" gives every post the same vector, so any gain there is this noise floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from ntulm.kge import NTUEmbeddings
from ntulm.lm.data import derangement, ntu_type_vectors, ntu_vectors
from ntulm.posts import Post

Control = Literal["shuffled", "mean"]
CONTROLS: tuple[str, ...] = ("shuffled", "mean")
__all__ = ["CONTROLS", "Control", "control_ntus", "derangement"]


def control_ntus(
    control: str,
    posts: Sequence[Post],
    ntu: NTUEmbeddings,
    types: Sequence[str],
    seed: int | Sequence[int] = 0,
    per_type: bool = False,
) -> np.ndarray:
    """The e_ntu rows a control feeds for ``posts`` (one split), (N, D) float32; with
    ``per_type``, the per-type rows of a ``ntu_tokens: per_type`` model, (N, K, D) with
    K = len(types). The permutation depends on ``seed`` and len(posts) only."""
    if control == "mean":
        shape = (len(posts), len(types), 1) if per_type else (len(posts), 1)
        return np.tile(np.asarray(ntu.mean, dtype=np.float32), shape)
    if control == "shuffled":
        # (N, D) each post's own e_ntu, or (N, K, D) its per-type rows (NaN where absent)
        rows, _ = (ntu_type_vectors if per_type else ntu_vectors)(posts, ntu, types)
        return rows[derangement(len(rows), np.random.default_rng(seed))]
    raise ValueError(f"control: {control!r} is not one of {', '.join(CONTROLS)}")
