"""Paired bootstrap intervals of a model's headline-metric difference against a baseline.

A result counts as a **win** (or **loss**) only when the 95% interval of the difference excludes
0; otherwise it is **no effect**. The bootstrap needs each run's per-post outcome, kept by
:func:`per_post_record` in every :func:`~ntulm.evaluate.runner.evaluate_task` result:

- ``macro_f1`` / ``precision``: the true class and the predicted class (argmax) per test post;
- ``accuracy``: whether the post is right; ``recall@k``: whether its class is in the top k;
- ``map`` (retrieval): each query's average precision (``None``: no relevant candidate); the
  candidates stay all test posts, only the queries are resampled.

The procedure (:func:`paired_bootstrap`), for one task, a model M and the baseline B:

1. *Pairings*: the runs of M and B with the same MLP seed and fine-tuning seed, R of them; all
   runs of a task share the same N test posts in the same order.
2. *Point estimate*: the mean over pairings of ``metric(M_r) - metric(B_r)`` on all test posts.
3. *Replicate* (``n_boot`` of them, numpy ``default_rng(seed)``): draw N test posts with
   replacement, **the same draw for both models and every pairing** (the test set is shared, so
   its sampling error is too), recompute the headline metric of M_r and B_r on that sample, and
   take the difference per pairing; draw R pairings with replacement and average their
   differences. With one pairing this is the classic paired post bootstrap; with several it also
   carries the spread over seeds (fine-tuning seeds with ``finetune_per_seed``, else MLP seeds).
4. *Interval*: the 2.5th and 97.5th percentiles of the replicates (``level=0.95``, percentile
   method); **win** when the low end is above 0, **loss** when the high end is below 0.

For a family of tasks (the TweetEval mean), each task's posts are drawn independently (they are
different posts) and the pairing draw is shared; the statistic is the mean over tasks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import sparse

_RECALL_AT = re.compile(r"^recall@(\d+)$")
CONFUSION = ("macro_f1", "precision")  # need (true, predicted) classes, not a per-post mean
# Cap on replicate-by-post weights held at once (floats): the bootstrap runs in chunks.
_CHUNK_CELLS = 4_000_000


def per_post_record(
    metric: str, y_true: np.ndarray, proba: np.ndarray, kind: str = "classification"
) -> dict[str, Any] | None:
    """What the bootstrap needs to recompute ``metric`` on any resample of the test posts;
    ``None`` when it is not supported (AUC, multi-label)."""
    if kind != "classification":
        return None
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba)
    pred = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=np.int64)
    if metric in CONFUSION:
        return {"metric": metric, "y": y_true.astype(np.int32), "pred": pred.astype(np.int32)}
    if metric == "accuracy":
        return {"metric": metric, "score": (pred == y_true).astype(np.float32)}
    if m := _RECALL_AT.match(metric):
        order = np.argsort(-proba.astype(np.float64), axis=1, kind="stable")[:, : int(m.group(1))]
        return {"metric": metric, "score": (order == y_true[:, None]).any(1).astype(np.float32)}
    return None


def retrieval_record(aps: np.ndarray) -> dict[str, Any]:
    """Per-query average precisions of the retrieval task (NaN: no relevant candidate)."""
    return {"metric": "map", "score": np.asarray(aps, dtype=np.float64)}


def record_size(rec: dict[str, Any]) -> int:
    return len(rec["score"] if "score" in rec else rec["y"])


def _prepare(rec: dict[str, Any]) -> tuple[str, Any]:
    """('mean', (values, valid)) or ('confusion', (T, P, TP) sparse one-hots (N, C))."""
    if "score" in rec:
        s = rec["score"]
        if not isinstance(s, np.ndarray):  # a list read back from JSON holds None for NaN
            s = [np.nan if v is None else v for v in s]
        s = np.asarray(s, dtype=np.float64)
        valid = ~np.isnan(s)
        return "mean", (np.where(valid, s, 0.0), valid.astype(np.float64))
    y = np.asarray(rec["y"], dtype=np.int64)
    pred = np.asarray(rec["pred"], dtype=np.int64)
    n = len(y)
    c = int(max(y.max(initial=-1), pred.max(initial=-1))) + 1
    rows = np.arange(n)

    def onehot(cls: np.ndarray, on: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((on.astype(np.float64), (rows, cls)), shape=(n, max(c, 1)))

    return "confusion", (onehot(y, np.ones(n)), onehot(pred, np.ones(n)), onehot(y, y == pred))


def _metric(metric: str, prepared: tuple[str, Any], w: np.ndarray) -> np.ndarray:
    """The metric under post weights ``w`` (B, N) (bootstrap counts): (B,)."""
    how, data = prepared
    if how == "mean":
        values, valid = data
        den = w @ valid
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (w @ values) / den, np.nan)
    t, p, tp = ((m.T @ w.T).T for m in data)  # (B, C) weighted class counts
    present = (t + p) > 0  # classes in the truth or the predictions of this sample
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "macro_f1":
            per_class = np.where(present, 2 * tp / (t + p), 0.0)  # = F1, 0 when tp = 0
        else:  # macro precision, zero_division=0
            per_class = np.where(p > 0, tp / np.where(p > 0, p, 1), 0.0)
    return per_class.sum(1) / np.maximum(present.sum(1), 1)


def metric_of(rec: dict[str, Any]) -> float:
    """The headline metric recomputed from a record on all its posts."""
    return float(_metric(rec["metric"], _prepare(rec), np.ones((1, record_size(rec))))[0])


@dataclass
class Interval:
    """A paired bootstrap result: ``diff`` (point estimate, M - B), ``low``/``high``."""

    diff: float
    low: float
    high: float
    mark: str  # "win" | "loss" | "no effect"
    baseline: float  # the baseline's metric (mean over pairings): diff / baseline = % change
    n_pairs: int
    n_posts: int
    n_boot: int
    level: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mark(low: float, high: float) -> str:
    """'win' when the interval lies above 0, 'loss' when below, else 'no effect'."""
    if low > 0:
        return "win"
    if high < 0:
        return "loss"
    return "no effect"


def _check_pair(model: dict[str, Any], base: dict[str, Any]) -> None:
    if model["metric"] != base["metric"]:
        raise ValueError(f"bootstrap: metrics differ ({model['metric']} vs {base['metric']})")
    if record_size(model) != record_size(base):
        raise ValueError(
            f"bootstrap: {record_size(model)} vs {record_size(base)} test posts: not paired"
        )
    if "y" in model and not np.array_equal(model["y"], base["y"]):
        raise ValueError("bootstrap: the two runs have different true labels: not paired")


def paired_bootstrap(
    tasks: Sequence[Sequence[tuple[dict[str, Any], dict[str, Any]]]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    return_replicates: bool = False,
) -> Interval | tuple[Interval, np.ndarray]:
    """Interval of mean(metric(M) - metric(B)) over pairings (and over ``tasks``, a family).

    ``tasks[t][r] = (record of M, record of B)`` for task t and seed pairing r (the module
    docstring gives the procedure); every task needs the same number of pairings."""
    if not tasks or not all(tasks):
        raise ValueError("bootstrap: no paired runs")
    n_pairs = len(tasks[0])
    if any(len(pairs) != n_pairs for pairs in tasks):
        raise ValueError("bootstrap: tasks have different numbers of seed pairings")
    rng = np.random.default_rng(seed)
    diff_sum = np.zeros((n_pairs, n_boot))  # (R, B): per pairing, summed over tasks
    point, base_value, n_posts = 0.0, 0.0, 0
    for pairs in tasks:
        for m, b in pairs:
            _check_pair(m, b)
        n = record_size(pairs[0][0])
        n_posts += n
        prepared = [(m["metric"], _prepare(m), _prepare(b)) for m, b in pairs]
        ones = np.ones((1, n))
        for metric, pm, pb in prepared:
            mm, bb = _metric(metric, pm, ones)[0], _metric(metric, pb, ones)[0]
            point += (mm - bb) / (n_pairs * len(tasks))
            base_value += bb / (n_pairs * len(tasks))
        chunk = max(1, _CHUNK_CELLS // max(n, 1))
        for start in range(0, n_boot, chunk):
            k = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(k, n))  # the posts of k replicates, shared by all runs
            w = np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n)
            w = w.reshape(k, n).astype(np.float64)  # (k, N) times each post is drawn
            for r, (metric, pm, pb) in enumerate(prepared):
                diff_sum[r, start : start + k] += _metric(metric, pm, w) - _metric(metric, pb, w)
    pick = rng.integers(0, n_pairs, size=(n_boot, n_pairs))  # pairings drawn per replicate
    reps = np.take_along_axis(diff_sum.T, pick, axis=1).mean(1) / len(tasks)  # (B,)
    reps = reps[~np.isnan(reps)]
    if not len(reps):
        raise ValueError("bootstrap: the metric is undefined on every resample")
    alpha = (1.0 - level) / 2.0
    low, high = (float(v) for v in np.quantile(reps, [alpha, 1.0 - alpha]))
    interval = Interval(
        diff=float(point),
        low=low,
        high=high,
        mark=mark(low, high),
        baseline=float(base_value),
        n_pairs=n_pairs,
        n_posts=n_posts,
        n_boot=n_boot,
        level=level,
    )
    return (interval, reps) if return_replicates else interval


# --- over the runs of a report -----------------------------------------------------------


def _pairs(
    runs: Sequence[dict[str, Any]], task: str, model: str, base: str
) -> list[tuple[dict, dict]] | None:
    """(model, base) per-post records paired on (MLP seed, fine-tuning seed); None if any is
    missing (a metric the bootstrap does not support, or results without per-post outcomes)."""
    keyed = {
        (r["variant"], r.get("seed"), r.get("finetune_seed")): r.get("per_post")
        for r in runs
        if r["task"] == task
    }
    seeds = sorted({k[1:] for k in keyed if k[0] == model}, key=str)
    pairs = [(keyed.get((model, *s)), keyed.get((base, *s))) for s in seeds]
    if not pairs or any(m is None or b is None for m, b in pairs):
        return None
    return [(m, b) for m, b in pairs if m is not None and b is not None]


def compare_runs(
    runs: Sequence[dict[str, Any]],
    baseline: str,
    variants: Sequence[str],
    families: dict[str, list[str]],
    controls: dict[str, list[str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Intervals of every variant against ``baseline`` and of every controlled variant against
    its controls, per task and per family of several tasks (their mean)::

        {"baseline", "n_boot", "seed", "level",
         "tasks" | "families": {name: {variant: {**Interval, "vs_controls": {control: Interval},
                                                 "counts": bool | None}}},
         "notes": [...]}

    ``counts`` is true when the variant wins against the baseline *and* against each of its
    controls (None without controls)."""
    controls = controls or {}
    notes: list[str] = []
    out: dict[str, Any] = {"baseline": baseline, "n_boot": n_boot, "seed": seed, "level": level}
    groups = {"tasks": {t: [t] for ts in families.values() for t in ts}}
    groups["families"] = {f: ts for f, ts in families.items() if len(ts) > 1}
    for group, members in groups.items():
        table: dict[str, dict[str, Any]] = {}
        for name, tasks in members.items():
            row: dict[str, Any] = {}
            for v in variants:
                if v == baseline:
                    continue
                cell = _interval(runs, tasks, v, baseline, n_boot, seed, level)
                if cell is None:
                    notes.append(f"{name}: {v} vs {baseline}: no per-post outcomes, no interval")
                    continue
                vs = {}
                for c in controls.get(v, []):
                    ci = _interval(runs, tasks, v, c, n_boot, seed, level)
                    if ci is not None:
                        vs[c] = ci
                cell["vs_controls"] = vs
                cell["counts"] = (
                    None
                    if not controls.get(v)
                    else cell["mark"] == "win"
                    and len(vs) == len(controls[v])
                    and all(ci["mark"] == "win" for ci in vs.values())
                )
                row[v] = cell
            table[name] = row
        out[group] = table
    out["notes"] = notes
    return out


def _interval(
    runs: Sequence[dict[str, Any]],
    tasks: list[str],
    model: str,
    base: str,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any] | None:
    per_task = []
    for t in tasks:
        pairs = _pairs(runs, t, model, base)
        if pairs is None:
            return None
        per_task.append(pairs)
    if len({len(p) for p in per_task}) != 1:
        return None
    ci = paired_bootstrap(per_task, n_boot=n_boot, seed=seed, level=level)
    assert isinstance(ci, Interval)
    return ci.to_json()
