"""Evaluate one task with one embedding function (paper §4.3): embed the posts of each split,
train the MLP (classification, multi-label) or rank by similarity (retrieval), and compute the
task's metrics on all test posts and on the overlap / non-overlap subsets.

``embed`` is any ``list[Post] -> (embeddings (N, d) float32, overlap flags (N,) bool)``; for a
model, ``lambda posts: encode(model, posts, return_overlap=True)``. The MLP's hyperparameters come
from the config, so every model compared gets the same downstream model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ntulm.evaluate.config import EvalConfig
from ntulm.evaluate.metrics import compute_metrics, map_of, retrieval_aps
from ntulm.evaluate.overlap import split_by_overlap
from ntulm.evaluate.significance import per_post_record, retrieval_record
from ntulm.evaluate.splits import author_key
from ntulm.evaluate.tasks import Task
from ntulm.posts import Post

log = logging.getLogger(__name__)

EmbedFn = Callable[[list[Post]], tuple[np.ndarray, np.ndarray]]


def _embed(embed: EmbedFn, posts: list[Post], split: str) -> tuple[np.ndarray, np.ndarray]:
    if not posts:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool)
    x, flags = embed(posts)
    x = np.asarray(x, dtype=np.float32)
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    if x.ndim != 2 or len(x) != len(posts) or len(flags) != len(posts):
        raise ValueError(
            f"{split}: embed returned {x.shape} embeddings and {flags.shape} flags "
            f"for {len(posts)} posts"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{split}: embed returned non-finite values")
    return x, flags


def _clean(values: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None or math.isnan(v) else float(v) for k, v in values.items()}


def evaluate_task(
    task: Task,
    embed: EmbedFn,
    config: EvalConfig,
    seed: int | None = None,
    overlap: np.ndarray | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Result of ``task`` on the embeddings ``embed`` gives (JSON-able)::

        {"task", "kind", "metrics": {m: v}, "overlap": {m: v}, "non_overlap": {m: v},
         "n": {"train", "val", "test", "overlap", "non_overlap"}, "training": {...}, "notes": [...],
         "per_post": {"metric", "y", "pred"} | {"metric", "score"} | None}

    ``per_post`` holds each test post's outcome for the headline metric
    (:mod:`ntulm.evaluate.significance`), so a paired bootstrap can recompute it.

    ``seed`` (default ``config.seed``) seeds the MLP. ``overlap`` replaces the test posts' flags
    from ``embed``: pass the NTULM's flags when evaluating a text-only baseline, so both are
    split on the same posts (Table 4). A value that cannot be computed is ``None`` with a note.
    ``model`` names the embeddings in the log line of the result (:func:`result_line`).
    """
    seed = config.seed if seed is None else seed
    x_test, flags = _embed(embed, task.test, "test")
    if overlap is not None:
        flags = np.asarray(overlap, dtype=bool).reshape(-1)
        if len(flags) != len(task.test):
            raise ValueError(f"overlap: {len(flags)} flags for {len(task.test)} test posts")
    n = {"train": len(task.train), "val": len(task.val)}
    training: dict[str, Any] = {}
    if task.kind == "retrieval":
        groups = [author_key(p) for p in task.test] if task.exclude_same_author else None
        # each query's AP ranks all test posts: computed once, subsets average theirs
        aps = retrieval_aps(x_test, task.y_test, groups=groups)  # (N_test,)
        per_post = retrieval_record(aps)

        def compute(idx: np.ndarray) -> tuple[dict[str, float | None], list[str]]:
            value, n_queries = map_of(aps[idx])
            note = (
                []
                if n_queries == len(idx)
                else [f"MAP over {n_queries} of {len(idx)} queries with a relevant post"]
            )
            return {"map": value}, note

    else:
        if not task.train:
            raise ValueError(f"task {task.name}: no training posts")
        x_train, _ = _embed(embed, task.train, "train")
        x_val, _ = _embed(embed, task.val, "val")
        multilabel = task.kind == "multilabel"
        kind = "multilabel" if multilabel else "classification"
        head = task.metrics[0]

        def score(y: np.ndarray, proba: np.ndarray) -> float | None:
            return compute_metrics([head], y, proba, kind)[0][head]

        from ntulm.evaluate.mlp import train_mlp  # torch, at the first scored task

        fitted = train_mlp(
            x_train,
            task.y_train,
            x_val,
            task.y_val,
            n_classes=len(task.classes),
            config=config.mlp,
            seed=seed,
            multilabel=multilabel,
            score_fn=score,
        )
        proba = fitted.predict_proba(x_test)  # (N_test, C)
        per_post = per_post_record(head, task.y_test, proba, kind)
        last = fitted.history[-1] if fitted.history else {}
        best = fitted.history[fitted.best_epoch - 1] if fitted.best_epoch else {}
        training = {
            "best_epoch": fitted.best_epoch,
            "epochs_run": len(fitted.history),
            "monitor": f"val {head}" if config.mlp.early_stopping == "metric" else "val loss",
            "best_val_score": best.get("val_score"),
            "best_val_loss": best.get("val_loss"),
            "final_train_loss": last.get("train_loss"),
        }

        def compute(idx: np.ndarray) -> tuple[dict[str, float | None], list[str]]:
            return compute_metrics(task.metrics, task.y_test[idx], proba[idx], kind)

    subsets, sizes, notes = split_by_overlap(flags, compute)
    n.update(sizes)
    result: dict[str, Any] = {"task": task.name, "kind": task.kind, "seed": seed}
    result.update({name: _clean(values) for name, values in subsets.items()})
    result.update(n=n, training=training, notes=notes)
    # per test post, what the paired bootstrap needs to recompute the headline metric
    result["per_post"] = per_post
    log.info("%s", result_line(result, model))
    return result


def result_line(result: dict[str, Any], model: str | None = None) -> str:
    """One log line per result: ``NTULM author | community | seed 1 | macro_f1 0.8407, ...``
    (4 digits; the model named, so the lines of several models can be told apart)."""
    metrics = ", ".join(
        f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in result["metrics"].items()
    )
    seed = f" | seed {result['seed']}" if result.get("seed") is not None else ""
    n = result.get("n", {}).get("test")
    size = f" | n_test {n}" if n is not None else ""
    return f"{model or 'model'} | {result['task']}{seed}{size} | {metrics}"
