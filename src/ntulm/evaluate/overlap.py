"""Overlap analysis (paper §5.2, Table 4, Figure 3): every metric on all test posts, on the posts
with an NTU known to the NTU embeddings (*overlap*) and on those without (*non-overlap*), and the
% change of a model against the baseline's (text-only BERT):
``(score - score_baseline) / score_baseline * 100``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

SUBSETS = ("metrics", "overlap", "non_overlap")

# (indices of the evaluated test posts) -> ({metric: value}, notes)
SubsetMetrics = Callable[[np.ndarray], tuple[dict[str, float | None], list[str]]]


def split_by_overlap(
    overlap: np.ndarray, compute: SubsetMetrics, min_n: int = 1
) -> tuple[dict[str, dict[str, float | None]], dict[str, int], list[str]]:
    """Run ``compute`` on all test posts and on the overlap / non-overlap subsets.

    Returns ``({"metrics": .., "overlap": .., "non_overlap": ..}, sizes, notes)``; a subset with
    fewer than ``min_n`` posts gets ``{}`` and a note ("n too small")."""
    overlap = np.asarray(overlap, dtype=bool)
    out: dict[str, dict[str, float | None]] = {}
    sizes: dict[str, int] = {}
    notes: list[str] = []
    subsets = {
        "metrics": np.arange(len(overlap)),
        "overlap": np.flatnonzero(overlap),
        "non_overlap": np.flatnonzero(~overlap),
    }
    for name, idx in subsets.items():
        key = "test" if name == "metrics" else name
        sizes[key] = len(idx)
        if len(idx) < min_n:
            out[name] = {}
            notes.append(f"{key}: n too small ({len(idx)} < {min_n}), metrics skipped")
            continue
        values, subset_notes = compute(idx)
        out[name] = values
        notes.extend(f"{key}: {n}" for n in subset_notes)
    return out, sizes, notes


def _change(score: Any, base: Any) -> float | None:
    if score is None or base is None:
        return None
    score, base = float(score), float(base)
    if not (np.isfinite(score) and np.isfinite(base)) or base == 0.0:
        return None
    return (score - base) / base * 100.0


def percent_change(
    result: dict[str, Any], baseline: dict[str, Any]
) -> dict[str, dict[str, float | None]]:
    """% change per metric of ``result`` against ``baseline`` (two :func:`evaluate_task` results
    of the same task), overall / overlap / non_overlap. ``None`` where either side is missing or
    the baseline is 0. Positive means higher; for perplexity, lower is better.

    Compare subsets only when both results used the same overlap flags: a text-only baseline
    has no NTU table, so evaluate it with the NTULM's flags (``evaluate_task(..., overlap=)``)."""
    out: dict[str, dict[str, float | None]] = {}
    for subset in SUBSETS:
        mine, base = result.get(subset) or {}, baseline.get(subset) or {}
        out[subset] = {m: _change(mine.get(m), base.get(m)) for m in mine if m in base}
    return out
