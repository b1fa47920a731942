"""Downstream tasks built from labelled posts (paper §4.1): the :class:`Task` record, label
classification split by post or by author, and retrieval MAP in the shape of the Topic task.

The hashtag-prediction task is in :mod:`ntulm.evaluate.hashtag`, TweetEval in
:mod:`ntulm.evaluate.tweeteval`; :func:`build_tasks` turns a config's task specs into tasks.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ntulm.evaluate.metrics import is_known_metric
from ntulm.evaluate.source import PostSource, as_source, authors_of, labels_of, take
from ntulm.evaluate.splits import SplitBy, author_key, split_keys
from ntulm.posts import Post
from ntulm.posts.rows import PostsTable

if TYPE_CHECKING:
    from ntulm.evaluate.temporal import Temporal

log = logging.getLogger(__name__)

TaskKind = Literal["classification", "multilabel", "retrieval"]
CLASSIFICATION = ["macro_f1", "accuracy", "precision", "auc"]


@dataclass
class Task:
    """A downstream task over posts. ``y_*`` are (N,) int class ids, or (N, C) 0/1 for
    ``multilabel`` (and optionally for ``retrieval``). ``metrics[0]`` is the headline metric (and
    what early stopping monitors)."""

    name: str
    kind: TaskKind
    train: list[Post]
    val: list[Post]
    test: list[Post]
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    metrics: list[str]
    # Post ids whose engagements must not enter the NTU graph (the hashtag task's val/test posts).
    exclude_from_graph: list[str] = field(default_factory=list)
    # (user id, user handle, hashtag): no graph edge may join them (the strict hashtag task).
    exclude_edges: list[tuple[str | None, str | None, str]] = field(default_factory=list)
    # Retrieval: leave out candidates by the query's own author (author-level labels).
    exclude_same_author: bool = False
    info: dict[str, Any] = field(default_factory=dict)  # how it was built, counts dropped

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            n, y = len(getattr(self, split)), getattr(self, f"y_{split}")
            if len(y) != n:
                raise ValueError(f"task {self.name}: {n} {split} posts but {len(y)} labels")
        bad = [m for m in self.metrics if not is_known_metric(m, self.kind)]
        if bad:
            raise ValueError(f"task {self.name}: metric(s) {bad} not defined for {self.kind}")

    def summary(self) -> dict[str, Any]:
        """Counts for a report: posts per split, classes, class sizes in test."""
        test_counts = (
            np.bincount(self.y_test, minlength=len(self.classes)).tolist()
            if self.y_test.ndim == 1 and len(self.y_test)
            else []
        )
        return {
            "name": self.name,
            "kind": self.kind,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "n_classes": len(self.classes),
            "test_class_counts": dict(zip(self.classes, test_counts, strict=False)),
            "metrics": list(self.metrics),
            **self.info,
        }


def _labelled(
    labels: list[str | None],
    label: str,
    min_class_count: int,
    max_per_class: int,
    seed: int,
    classes: Sequence[str] = (),
    min_class_authors: int = 1,
    authors: Sequence[str | None] | None = None,
) -> tuple[list[int], list[str], dict[str, Any]]:
    """Positions of the posts that carry ``label``, in corpus order: only the ``classes`` asked
    for (all when empty), classes with fewer than ``min_class_count`` posts or
    ``min_class_authors`` authors dropped, each class capped at ``max_per_class`` (sampled); the
    classes; what was dropped (``info``). A class asked for that does not survive is an error."""
    kept = [i for i, y in enumerate(labels) if y]
    if not kept:
        raise ValueError(f"no post has the label {label!r}")
    counts = Counter(labels[i] for i in kept)
    info: dict[str, Any] = {}
    if classes:
        absent = [c for c in classes if c not in counts]
        if absent:
            raise ValueError(
                f"label {label!r}: classes {absent} asked for are on no post "
                f"(present: {sorted(counts)[:20]})"
            )
        others = {c: n for c, n in counts.items() if c not in set(classes)}
        if others:
            log.info("label %r: kept classes %s, left out %s", label, list(classes), others)
        info["classes_not_kept"] = dict(sorted(others.items()))
        kept = [i for i in kept if labels[i] in set(classes)]
        counts = Counter(labels[i] for i in kept)
    small = sorted(c for c, n in counts.items() if n < min_class_count)
    if small:
        log.warning(
            "label %r: dropped classes with < %d posts: %s",
            label,
            min_class_count,
            {c: counts[c] for c in small},
        )
    few = []
    if min_class_authors > 1:
        if authors is None:
            raise ValueError("min_class_authors: author keys needed")
        per_class: dict[str, set[str]] = {}
        for i in kept:
            if authors[i] is not None:
                per_class.setdefault(labels[i], set()).add(authors[i])  # type: ignore[arg-type]
        few = sorted(
            c for c in counts if c not in small and len(per_class.get(c, ())) < min_class_authors
        )
        if few:
            log.warning(
                "label %r: dropped classes with < %d authors: %s",
                label,
                min_class_authors,
                {c: len(per_class.get(c, ())) for c in few},
            )
        info["classes_dropped_few_authors"] = few
    drop = set(small) | set(few)
    if classes and drop:
        raise ValueError(
            f"label {label!r}: classes {sorted(drop)} asked for have fewer than "
            f"{min_class_count} posts or {min_class_authors} authors "
            f"({ {c: counts[c] for c in sorted(drop)} } posts)"
        )
    if drop:
        kept = [i for i in kept if labels[i] not in drop]
    if max_per_class:
        rng = np.random.default_rng(seed)
        by_class: dict[str, list[int]] = {}
        for k, i in enumerate(kept):
            by_class.setdefault(labels[i], []).append(k)  # type: ignore[arg-type]
        keep = sorted(
            int(k)
            for idx in by_class.values()
            for k in (
                rng.choice(idx, max_per_class, replace=False) if len(idx) > max_per_class else idx
            )
        )
        kept = [kept[k] for k in keep]
    out_classes = list(classes) if classes else sorted({labels[i] for i in kept})  # type: ignore[type-var]
    if len(out_classes) < 2:
        raise ValueError(
            f"label {label!r}: fewer than 2 classes with >= {min_class_count} posts"
            + (f" and >= {min_class_authors} authors" if min_class_authors > 1 else "")
        )
    return kept, out_classes, {"classes_dropped": small, **info}


def missing_classes(task: Task) -> dict[str, list[str]]:
    """Classes with no post in a split (``{split: [class, ...]}``), logged as a warning; a
    retrieval task is checked on its test split only."""
    if task.y_test.ndim != 1:
        return {}
    splits = ("test",) if task.kind == "retrieval" else ("train", "val", "test")
    out = {}
    for split in splits:
        y = getattr(task, f"y_{split}")
        if split == "val" and not len(y):
            continue
        seen = set(np.unique(y).tolist())
        absent = [c for k, c in enumerate(task.classes) if k not in seen]
        if absent:
            out[split] = absent
            log.warning(
                "task %s: class(es) %s have no post in the %s split", task.name, absent, split
            )
    return out


SPLIT_NAMES = {"train": 0, "val": 1, "valid": 1, "validation": 1, "dev": 1, "test": 2}


def label_split(values: Sequence[str | None], column: str) -> tuple[np.ndarray, ...]:
    """Train, val and test positions from a split label (``train``; ``val``, ``validation``,
    ``valid`` or ``dev``; ``test``, any case) and the number of posts without one."""
    splits: list[list[int]] = [[], [], []]
    missing = 0
    for i, v in enumerate(values):
        if v is None or not v.strip():
            missing += 1
            continue
        k = SPLIT_NAMES.get(v.strip().lower())
        if k is None:
            raise ValueError(
                f"split_by label:{column}: value {v!r} is not train, val (validation, valid, "
                "dev) or test"
            )
        splits[k].append(i)
    if missing:
        log.warning("split_by label:%s: %d posts without that label left out", column, missing)
    train, val, test = (np.asarray(s, dtype=np.int64) for s in splits)
    if not len(train) or not len(test):
        raise ValueError(
            f"split_by label:{column}: {len(train)} train and {len(test)} test posts; both needed"
        )
    return train, val, test, missing


def _split_task(
    name: str,
    kind: TaskKind,
    src: list[Post] | PostsTable,
    kept: list[int],
    labels: list[str | None],
    label: str,
    classes: list[str],
    split_by: SplitBy,
    val_frac: float,
    test_frac: float,
    seed: int,
    metrics: list[str],
    info: dict[str, Any],
    max_test: int = 0,
    temporal: Temporal | None = None,
) -> Task:
    """Split the posts at ``kept`` and turn only the ones a split keeps into posts. Retrieval
    (``max_test``) keeps at most that many test posts and that many train posts (sampled).
    Under the temporal protocol (``temporal``) the split is
    :func:`~ntulm.evaluate.temporal.temporal_split_keys`."""
    strata: list[str] = [labels[i] for i in kept]  # type: ignore[misc]
    authors = None
    if split_by.startswith("label:"):
        if temporal is not None:
            raise ValueError(
                f"task {name}: split_by {split_by} and the temporal protocol exclude each other"
            )
        column = split_by[len("label:") :]
        every = labels_of(src, column)
        train, val, test, dropped = label_split([every[i] for i in kept], column)
        extra: dict[str, Any] = {"posts_dropped_in_split": dropped}
    elif split_by == "author":
        every = authors_of(src)
        authors = [every[i] for i in kept]
        del every
    if split_by.startswith("label:"):
        pass
    elif temporal is None:
        train, val, test, dropped = split_keys(authors, strata, split_by, val_frac, test_frac, seed)
        extra = {"posts_dropped_in_split": dropped}
    else:
        from ntulm.evaluate.temporal import temporal_split_keys

        period = temporal.period[np.asarray(kept, dtype=np.int64)]
        train, val, test, extra = temporal_split_keys(
            period, authors, strata, split_by, val_frac, test_frac, seed, temporal.train_from
        )
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[s] for s in strata], dtype=np.int64)
    info = {**info, "label": label, "split_by": split_by, **extra}
    if kind == "retrieval" and max_test:
        if len(test) > max_test:
            rng = np.random.default_rng(seed)
            test = test[np.sort(rng.choice(len(test), max_test, replace=False))]
        info["train_posts_total"] = len(train)
        if len(train) > max_test:  # unused by the MLP; kept for design queries (protocol.py)
            rng = np.random.default_rng([seed, 1])
            train = train[np.sort(rng.choice(len(train), max_test, replace=False))]
    pos = np.asarray(kept, dtype=np.int64)
    parts = [pos[train], pos[val], pos[test]]
    posts = take(src, np.concatenate(parts))
    cut = np.cumsum([len(x) for x in parts])
    task = Task(
        name=name,
        kind=kind,
        train=posts[: cut[0]],
        val=posts[cut[0] : cut[1]],
        test=posts[cut[1] :],
        y_train=y[train],
        y_val=y[val],
        y_test=y[test],
        classes=classes,
        metrics=metrics,
        exclude_same_author=kind == "retrieval" and split_by == "author",
        info=info,
    )
    absent = missing_classes(task)
    if absent:
        task.info["classes_missing"] = absent
    return task


def classification_task(
    posts: PostSource,
    label: str,
    split_by: SplitBy = "post",
    val_frac: float = 0.1,
    test_frac: float = 0.2,
    seed: int = 13,
    min_class_count: int = 10,
    max_per_class: int = 0,
    name: str | None = None,
    temporal: Temporal | None = None,
    classes: Sequence[str] = (),
    min_class_authors: int = 1,
) -> Task:
    """Predict ``post.labels[label]`` from the post embedding (macro-F1 first).

    ``classes`` keeps only those classes (all when empty); classes with fewer than
    ``min_class_count`` posts or ``min_class_authors`` authors are dropped; ``max_per_class``
    caps each class by sampling (0: no cap). Split stratified by label, by post, by author or
    from a split label (``split_by="label:<column>"``). ``posts`` is a list of posts or a
    :class:`~ntulm.posts.rows.PostsTable` (the same task either way)."""
    src = as_source(posts)
    labels = labels_of(src, label)
    kept, classes, info = _labelled(
        labels, label, min_class_count, max_per_class, seed, classes, min_class_authors,
        authors_of(src) if min_class_authors > 1 else None,
    )  # fmt: skip
    return _split_task(
        name or label,
        "classification",
        src,
        kept,
        labels,
        label,
        classes,
        split_by,
        val_frac,
        test_frac,
        seed,
        list(CLASSIFICATION),
        info,
        temporal=temporal,
    )


def retrieval_task(
    posts: PostSource,
    label: str,
    split_by: SplitBy = "post",
    seed: int = 13,
    test_frac: float = 0.2,
    max_test: int = 5000,
    min_class_count: int = 10,
    name: str | None = None,
    temporal: Temporal | None = None,
    classes: Sequence[str] = (),
    min_class_authors: int = 1,
    max_per_class: int = 0,
) -> Task:
    """The Topic task's shape: each test post ranks the other test posts by cosine similarity of
    their embeddings; relevant = same label; MAP. No model is trained.

    At most ``max_test`` test posts (sampled) are ranked. The MLP does not use the train split:
    a sample of ``max_test`` of its posts is kept (for design queries, ``validation_task``), its
    full size is ``info["train_posts_total"]``. Split by author, candidates by the query's own
    author are left out of its ranking, so author identity cannot score."""
    src = as_source(posts)
    labels = labels_of(src, label)
    kept, classes, info = _labelled(
        labels, label, min_class_count, max_per_class, seed, classes, min_class_authors,
        authors_of(src) if min_class_authors > 1 else None,
    )  # fmt: skip
    task = _split_task(
        name or f"{label}_retrieval",
        "retrieval",
        src,
        kept,
        labels,
        label,
        classes,
        split_by,
        0.0,
        test_frac,
        seed,
        ["map"],
        info,
        max_test=max_test,
        temporal=temporal,
    )
    if task.exclude_same_author:
        missing = sum(author_key(p) is None for p in task.test)
        if missing:
            log.warning("retrieval %s: %d test posts without an author", task.name, missing)
    return task


def build_tasks(
    spec: Any,
    posts: list[Post] | PostsTable | None,
    seed: int,
    temporal: Temporal | None = None,
) -> list[Task]:
    """Tasks for one :class:`~ntulm.evaluate.config.TaskSpec` from a list of posts or a posts
    table (``posts`` unused for tweeteval). ``temporal``: the temporal protocol's cutoff over
    ``posts`` (corpus tasks only; TweetEval keeps its own splits)."""
    from ntulm.evaluate.hashtag import hashtag_task
    from ntulm.evaluate.tweeteval import tweeteval_tasks

    if spec.type == "tweeteval":
        return tweeteval_tasks(
            spec.root, spec.names, max_per_class=spec.max_per_class, classes=spec.classes, seed=seed
        )
    if posts is None:
        raise ValueError(f"task type {spec.type}: needs posts")
    common = {
        "seed": seed,
        "test_frac": spec.test_frac,
        "min_class_count": spec.min_class_posts,
        "min_class_authors": spec.min_class_authors,
        "classes": spec.classes,
        "max_per_class": spec.max_per_class,
        "split_by": spec.split_by,
        "name": spec.name,
        "temporal": temporal,
    }
    if spec.type == "classification":
        return [classification_task(posts, spec.label, val_frac=spec.val_frac, **common)]
    if spec.type == "retrieval":
        return [retrieval_task(posts, spec.label, max_test=spec.max_test, **common)]
    if spec.type == "hashtag":
        return [
            hashtag_task(
                posts,
                top_k=spec.top_k,
                per_class=spec.per_class,
                seed=seed,
                val_frac=spec.val_frac,
                test_frac=spec.test_frac,
                name=spec.name or "hashtag",
                exclusion=spec.exclusion,
                temporal=temporal,
                min_classes=spec.min_classes,
            )
        ]
    raise ValueError(f"unknown task type {spec.type!r}")
