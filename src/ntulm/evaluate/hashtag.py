"""Hashtag prediction (paper §4.1): the top-K hashtags are the classes; from each chosen post ONE
of them is removed, from the text (its ``#Tag`` occurrences, matched case-insensitively as the
NTU key ``tag``) and from ``post.hashtags``, and the model predicts it from what remains (text,
other hashtags, author). Every class gets the same number of posts; the metric is Recall@10.

The validation and test posts must add no edges to the NTU graph, or the removed hashtag leaks
back through the author-hashtag relation: their ids are :attr:`Task.exclude_from_graph`. With
``exclusion="strict"`` the author of a test post loses the edge to its removed hashtag altogether
(from any post, any relation): :attr:`Task.exclude_edges`. Otherwise an author who used the
hashtag in other posts keeps that edge, and their NTU vector still points at the answer.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ntulm.evaluate.source import PostSource, as_source, hashtag_counts, tagged, take
from ntulm.evaluate.splits import split_indices
from ntulm.evaluate.tasks import Task
from ntulm.evaluate.temporal import Temporal, temporal_split_keys
from ntulm.posts import Post, normalize_hashtag
from ntulm.posts.extract import HASHTAG_RE, URL_RE

log = logging.getLogger(__name__)


def remove_hashtag(text: str, tag: str) -> str:
    """``text`` without its ``#Tag`` occurrences whose NTU key is ``tag`` (NFKC + casefold), each
    with one adjacent space; hashtag-like fragments inside URLs are left alone."""
    urls = [m.span() for m in URL_RE.finditer(text)]
    spans = [
        m.span()
        for m in HASHTAG_RE.finditer(text)
        if normalize_hashtag(m.group(1)) == tag and not any(a <= m.start() < b for a, b in urls)
    ]
    for start, end in reversed(spans):
        if start > 0 and text[start - 1] == " ":
            start -= 1
        elif end < len(text) and text[end] == " ":
            end += 1
        text = text[:start] + text[end:]
    return text.strip()


def _without(post: Post, tag: str) -> Post:
    """A copy of ``post`` with ``tag`` removed from its text and hashtags (lists copied)."""
    copy = dataclasses.replace(post, text=remove_hashtag(post.text, tag))
    copy.hashtags = [h for h in post.hashtags if h != tag]
    for name in ("mentions", "urls", "media", "favorited_by", "retweeted_by", "replied_by"):
        setattr(copy, name, list(getattr(post, name)))
    copy.labels = {**post.labels, "hashtag": tag}
    return copy


def hashtag_task(
    posts: PostSource,
    top_k: int = 1000,
    per_class: int = 100,
    seed: int = 13,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    name: str = "hashtag",
    exclusion: str = "posts",
    temporal: Temporal | None = None,
    min_classes: int | None = None,
) -> Task:
    """Build the hashtag-prediction task.

    Classes are the ``top_k`` hashtags by number of posts (ties by name). Each class draws
    ``per_class`` posts that carry it, rarest class first, a post serving one class only; a
    post whose text would be empty once the hashtag is gone is not used. A class with fewer
    than ``per_class`` usable posts is dropped (named in the log and in ``info``), so the task
    stays balanced; fewer than ``min_classes`` classes left (default: half of ``top_k``, at least
    2) is an error. Each class
    is split train/val/test on its own (``val_frac``, ``test_frac``), so every split is balanced.
    ``exclusion`` is ``"posts"`` (the validation and test posts give no graph edges) or
    ``"strict"`` (also no (test author, removed hashtag) edge; see the module docstring).
    ``posts`` is a list of posts or a :class:`~ntulm.posts.rows.PostsTable` (the same task).
    Under the temporal protocol (``temporal``) the chosen posts are split by
    :func:`~ntulm.evaluate.temporal.temporal_split_keys` (by post): validation and test posts
    are from at or after the cutoff.
    """
    if exclusion not in ("posts", "strict"):
        raise ValueError(f"exclusion: {exclusion!r} is not 'posts' or 'strict'")
    src = as_source(posts)
    counts = hashtag_counts(src)
    top = [h for h, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]
    top_set = set(top)
    candidates: dict[str, list[int]] = {h: [] for h in top}
    for i, text, tags in tagged(src, top):
        for h in tags:
            if h in top_set and remove_hashtag(text, h):
                candidates[h].append(i)
    rng = np.random.default_rng(seed)
    used: set[int] = set()
    chosen: dict[str, list[int]] = {}
    short = []
    for h in sorted(top, key=lambda t: (len(candidates[t]), t)):  # rarest first: fewest options
        free = [i for i in candidates[h] if i not in used]
        if len(free) < per_class:
            short.append(h)
            continue
        pick = sorted(int(i) for i in rng.choice(free, per_class, replace=False))
        chosen[h] = pick
        used.update(pick)
    classes = sorted(chosen)
    floor = min_classes if min_classes is not None else max(2, -(-min(top_k, len(top)) // 2))
    shortfall = {h: len(candidates[h]) for h in sorted(short)}
    if short:
        log.warning(
            "hashtag task: %d of %d hashtags dropped, fewer than per_class=%d usable posts "
            "(usable posts each): %s",
            len(short),
            len(top),
            per_class,
            shortfall,
        )
    if len(classes) < max(floor, 2):
        raise ValueError(
            f"hashtag task: only {len(classes)} of the top {len(top)} hashtags have {per_class} "
            f"usable posts, fewer than min_classes={max(floor, 2)}; dropped (usable posts): "
            f"{shortfall}. Lower per_class or top_k, set min_classes, or add posts"
        )
    order = [(h, i) for h in classes for i in chosen[h]]
    originals = take(src, [i for _, i in order])  # only the chosen posts become objects
    examples = [_without(p, h) for (h, _), p in zip(order, originals, strict=True)]
    strata = [p.labels["hashtag"] for p in examples]
    split_info: dict = {}
    if temporal is None:
        train, val, test, _ = split_indices(examples, strata, "post", val_frac, test_frac, seed)
    else:
        period = temporal.period[np.array([i for _, i in order], dtype=np.int64)]
        train, val, test, split_info = temporal_split_keys(
            period, None, strata, "post", val_frac, test_frac, seed, temporal.train_from
        )
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[s] for s in strata], dtype=np.int64)
    test_posts = [examples[i] for i in test]
    held = [examples[i] for i in (*val, *test)]
    pairs = (
        sorted(
            {(p.author.id, p.author.handle, p.labels["hashtag"]) for p in test_posts if p.author},
            key=lambda t: (t[0] or "", t[1] or "", t[2]),
        )
        if exclusion == "strict"
        else []
    )
    return Task(
        name=name,
        kind="classification",
        train=[examples[i] for i in train],
        val=[examples[i] for i in val],
        test=test_posts,
        y_train=y[train],
        y_val=y[val],
        y_test=y[test],
        classes=classes,
        metrics=["recall@10", "accuracy", "macro_f1"],
        exclude_from_graph=[p.id for p in held],
        exclude_edges=pairs,
        info={
            "top_k": top_k,
            "per_class": per_class,
            "hashtags_dropped": len(short),
            "hashtags_dropped_names": sorted(short),
            "graph_exclusion": exclusion,
            "graph_excluded_posts": len(held),
            "graph_excluded_pairs": len(pairs),
            "label": "hashtag",
            "split_by": "post",
            **split_info,
        },
    )
