"""Downstream metrics (paper §4.1, Tables 2-4): macro-F1, accuracy, precision, AUC, Recall@k, MAP
and perplexity in bits.

Classification metrics come from scikit-learn; Recall@k and average precision are written out by
hand because their tie-breaking must be explicit (ties are ranked by index, lowest first, so a
result never depends on a sort's whims). :func:`compute_metrics` turns a metric list such as
``["macro_f1", "auc"]`` into ``{name: value}``; a metric that cannot be computed on the given
labels (AUC with a class absent) is ``None`` and explained in the returned notes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

# scikit-learn (~110 MB resident) is imported by the functions that score: `ntulm run`'s own
# process then carries it only from its first evaluation on, not through the graph, KGE and
# fine-tuning stages, whose workers run beside it (the memory goal of issue 12).

CLASSIFICATION_METRICS = ("macro_f1", "accuracy", "precision", "auc")
# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = frozenset({"perplexity", "bits"})
_RECALL_AT = re.compile(r"^recall@(\d+)$")


def is_known_metric(name: str, kind: str) -> bool:
    if kind == "retrieval":
        return name == "map"
    if kind == "multilabel":
        return name in CLASSIFICATION_METRICS or name == "map"
    return name in CLASSIFICATION_METRICS or _RECALL_AT.match(name) is not None


# --- ranking metrics ------------------------------------------------------------------------


def _rank(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties in index order (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), axis=-1, kind="stable")


def recall_at_k(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the ``k`` highest-scoring classes.

    ``y_true`` (N,) int class ids, ``scores`` (N, C) class scores or probabilities."""
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if len(y_true) == 0:
        return float("nan")
    top = _rank(scores)[:, :k]  # (N, k)
    return float(np.mean((top == y_true[:, None]).any(axis=1)))


def average_precision(relevant_in_rank_order: Sequence[bool] | np.ndarray) -> float:
    """AP of one ranked list: the mean of precision@i over the ranks i of relevant items.

    ``[1, 0, 1]`` -> (1/1 + 2/3) / 2. A list without relevant items has no AP (``nan``)."""
    rel = np.asarray(relevant_in_rank_order, dtype=bool)
    if not rel.any():
        return float("nan")
    hits = np.cumsum(rel)  # (L,)
    ranks = np.arange(1, len(rel) + 1)
    return float(np.mean(hits[rel] / ranks[rel]))


def label_map(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro MAP over labels for multi-label output: for each label, rank the posts by its score
    and take the AP of that ranking; labels without a positive post are skipped."""
    y_true = np.asarray(y_true, dtype=bool)
    aps = [average_precision(y_true[_rank(scores[:, c]), c]) for c in range(y_true.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def retrieval_aps(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    groups: Sequence[str | None] | None = None,
    query_mask: np.ndarray | None = None,
    block: int = 1024,
) -> np.ndarray:
    """Average precision of each query of the paper's Topic task, (Q,) float64 (``nan`` for a
    query without a relevant candidate): every post (where ``query_mask``) queries all *other*
    posts, ranked by cosine similarity; a candidate is relevant when it shares the query's label
    (``labels`` (N,) ids) or any label (``labels`` (N, C) 0/1). With ``groups`` (author keys),
    candidates from the query's own group are left out, so a same-author match cannot count."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.maximum(norms, 1e-12)
    n = len(x)
    lab = np.asarray(labels)
    multi = lab.ndim == 2
    grp = (
        None
        if groups is None
        else np.asarray([g if g is not None else f"\0{i}" for i, g in enumerate(groups)])
    )
    queries = np.arange(n) if query_mask is None else np.flatnonzero(query_mask)
    aps = np.full(len(queries), np.nan)
    for start in range(0, len(queries), block):
        q = queries[start : start + block]
        sims = x[q] @ x.T  # (B, N)
        for row, i in enumerate(q):
            keep = np.arange(n) != i
            if grp is not None:
                keep &= grp != grp[i]
            cand = np.flatnonzero(keep)
            order = cand[_rank(sims[row, cand])]
            rel = (lab[order] @ lab[i] > 0) if multi else lab[order] == lab[i]
            aps[start + row] = average_precision(rel)
    return aps


def retrieval_map(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    groups: Sequence[str | None] | None = None,
    query_mask: np.ndarray | None = None,
    block: int = 1024,
) -> tuple[float, int]:
    """MAP of :func:`retrieval_aps`: ``(MAP over queries with at least one relevant candidate,
    number of such queries)``."""
    aps = retrieval_aps(embeddings, labels, groups=groups, query_mask=query_mask, block=block)
    return map_of(aps)


def map_of(aps: np.ndarray) -> tuple[float, int]:
    """(mean of the defined APs, how many are defined); ``nan`` when none is."""
    ok = aps[~np.isnan(aps)]
    return (float(np.mean(ok)) if len(ok) else float("nan")), len(ok)


# --- perplexity -----------------------------------------------------------------------------


def perplexity_bits(mean_nll_nats: float) -> float:
    """Mean cross-entropy in bits (the paper's "perplexity bits"): nats / ln 2."""
    return float(mean_nll_nats) / math.log(2.0)


def perplexity(mean_nll_nats: float) -> float:
    """Perplexity ``2 ** bits`` (= ``e ** nats``)."""
    return float(2.0 ** perplexity_bits(mean_nll_nats))


# --- one call for a task --------------------------------------------------------------------


def _auc(y_true: np.ndarray, proba: np.ndarray, kind: str) -> tuple[float | None, str | None]:
    from sklearn.metrics import roc_auc_score

    n_classes = proba.shape[1]
    if kind == "multilabel":
        present = [c for c in range(n_classes) if 0 < y_true[:, c].sum() < len(y_true)]
        if not present:
            return None, "auc skipped: no label has both positive and negative test posts"
        note = None
        if len(present) < n_classes:
            note = f"auc over {len(present)} of {n_classes} labels (others one-sided in test)"
        return float(roc_auc_score(y_true[:, present], proba[:, present], average="macro")), note
    absent = sorted(set(range(n_classes)) - set(np.unique(y_true).tolist()))
    if absent:
        return None, f"auc skipped: class id(s) {absent} absent from the evaluated posts"
    if n_classes == 2:
        return float(roc_auc_score(y_true, proba[:, 1])), None
    proba = proba / proba.sum(axis=1, keepdims=True)  # guard float32 rounding in the sum-to-1 check
    auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=range(n_classes))
    return float(auc), None


def compute_metrics(
    names: Sequence[str], y_true: np.ndarray, proba: np.ndarray, kind: str = "classification"
) -> tuple[dict[str, float | None], list[str]]:
    """``{metric: value}`` and notes, from true labels and predicted probabilities.

    ``kind="classification"``: ``y_true`` (N,) class ids, ``proba`` (N, C) softmax output; the
    prediction is the argmax. ``kind="multilabel"``: ``y_true`` (N, C) 0/1, ``proba`` (N, C)
    sigmoid output; a label is predicted at probability >= 0.5 and accuracy is exact-set match.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    out: dict[str, float | None] = {}
    notes: list[str] = []
    if len(y_true) == 0:
        return {m: None for m in names}, ["no posts to evaluate"]
    y_pred = (proba >= 0.5).astype(int) if kind == "multilabel" else proba.argmax(axis=1)
    present = None if kind == "multilabel" else sorted(set(np.unique(y_true)) | set(y_pred))
    for name in names:
        if name == "macro_f1":
            # Macro over the classes seen in truth or prediction (scikit-learn's default), so a
            # class absent from both does not count as a zero.
            out[name] = float(
                f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)
            )
        elif name == "precision":
            out[name] = float(
                precision_score(y_true, y_pred, average="macro", labels=present, zero_division=0)
            )
        elif name == "accuracy":
            out[name] = float(accuracy_score(y_true, y_pred))
        elif name == "auc":
            out[name], note = _auc(y_true, proba, kind)
            if note:
                notes.append(note)
        elif name == "map" and kind == "multilabel":
            out[name] = label_map(y_true, proba)
        elif (m := _RECALL_AT.match(name)) and kind == "classification":
            out[name] = recall_at_k(y_true, proba, int(m.group(1)))
        else:
            raise ValueError(f"metric {name!r} is not defined for {kind} tasks")
    return out, notes
