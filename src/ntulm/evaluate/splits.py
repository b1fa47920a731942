"""Train / validation / test splits, by post or by author, stratified by label.

An author-level label (IRA ``account_category``) must be split by author: with the same author on
both sides a classifier learns the author, not the task. :func:`split_indices` with
``split_by="author"`` puts every author's posts into one split only; posts without an author
cannot be placed and are dropped (counted, with a warning).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from ntulm.posts import Post

log = logging.getLogger(__name__)

# "post", "author", or "label:<column>" (membership from a split label, evaluate/tasks.py)
SplitBy = str


def author_key(post: Post) -> str | None:
    """The author's identity (``id:<id>`` or ``@<handle>``), ``None`` when unknown."""
    if post.author is None or not (post.author.id or post.author.handle):
        return None
    return post.author.key


def _allocate(sizes: Sequence[int], val_frac: float, test_frac: float) -> list[int]:
    """Split units (already shuffled) to 0=train / 1=val / 2=test: each unit goes to the split
    furthest below its share of the posts, so whole authors of any size land near the targets.
    With >= 2 units, train and test each get at least one."""
    total = sum(sizes)
    targets = np.array([1.0 - val_frac - test_frac, val_frac, test_frac]) * total
    filled = np.zeros(3)
    out = []
    for size in sizes:
        split = int(np.argmax(targets - filled))  # ties: train first
        filled[split] += size
        out.append(split)
    if len(sizes) >= 2:
        for need in (2, 0):  # a stratum must be tested, and trained on
            if need not in out:
                donors = [k for k, s in enumerate(out) if out.count(s) > 1 or s == 1]
                out[min(donors, key=lambda k: sizes[k])] = need
    return out


def split_indices(
    posts: Sequence[Post],
    strata: Sequence[str],
    split_by: SplitBy,
    val_frac: float,
    test_frac: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Indices of train, val and test posts and the number of posts dropped.

    Stratified by ``strata`` (the post's label): each label is split on its own, so every split
    gets about the same label mix. By author, an author's stratum is their most frequent label,
    and a label held by a single author is dropped (it cannot be both trained on and tested).
    """
    authors = [author_key(p) for p in posts] if split_by == "author" else None
    return split_keys(authors, strata, split_by, val_frac, test_frac, seed)


def split_keys(
    authors: Sequence[str | None] | None,
    strata: Sequence[str],
    split_by: SplitBy,
    val_frac: float,
    test_frac: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`split_indices` on columns: ``authors[i]`` is post i's :func:`author_key` (needed
    only by author), ``strata[i]`` its label."""
    if not 0.0 <= val_frac < 1.0 or not 0.0 < test_frac < 1.0 or val_frac + test_frac >= 1.0:
        raise ValueError(f"bad split fractions: val_frac={val_frac}, test_frac={test_frac}")
    rng = np.random.default_rng(seed)
    splits: list[list[int]] = [[], [], []]
    dropped = 0
    if split_by == "post":
        by_label: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(strata):
            by_label[s].append(i)
        for label in sorted(by_label):
            idx = np.array(by_label[label])
            rng.shuffle(idx)
            for i, split in zip(idx, _allocate([1] * len(idx), val_frac, test_frac), strict=True):
                splits[split].append(int(i))
    elif split_by == "author":
        by_author: dict[str, list[int]] = defaultdict(list)
        if authors is None:
            raise ValueError("split by author: author keys needed")
        for i, key in enumerate(authors):
            if key is None:
                dropped += 1
            else:
                by_author[key].append(i)
        if dropped:
            log.warning("split by author: dropped %d posts without an author", dropped)
        stratum_authors: dict[str, list[str]] = defaultdict(list)
        for author in sorted(by_author):
            top = Counter(strata[i] for i in by_author[author]).most_common()
            label = min(lab for lab, c in top if c == top[0][1])  # ties: first label by name
            stratum_authors[label].append(author)
        for label in sorted(stratum_authors):
            authors = stratum_authors[label]
            if len(authors) < 2:
                n = sum(len(by_author[a]) for a in authors)
                log.warning("split by author: label %r has one author; dropped %d posts", label, n)
                dropped += n
                continue
            order = rng.permutation(len(authors))
            units = [by_author[authors[j]] for j in order]
            assigned = _allocate([len(u) for u in units], val_frac, test_frac)
            for unit, split in zip(units, assigned, strict=True):
                splits[split].extend(unit)
    else:
        raise ValueError(f"split_by must be 'post' or 'author', got {split_by!r}")
    train, val, test = (np.array(sorted(s), dtype=np.int64) for s in splits)
    return train, val, test, dropped
