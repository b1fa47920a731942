"""A seeded generator of a small **synthetic** social corpus with planted structure.

Nothing here is real data. It exists so the quickstart and the tests can run every stage offline
and check that the method finds what was planted:

- users belong to ``communities``; each community has its own hashtags, its own topic words and
  its own URL domain, and a label (``community``) that downstream tasks can predict;
- a post's author writes mostly from their community's vocabulary (``purity`` of it; the rest from
  a shared vocabulary and other communities), tags it with the community's hashtags (some posts
  have none), mentions and is favorited / retweeted by users of the same community;
- a few posts are replies to earlier posts; the label ``stance`` is a per-post label that depends
  on words in the text, so a text-only model can learn it too;
- a share ``newcomers`` of posts come from one-off users without hashtags: no NTU of theirs is in
  the graph, so they form the non-overlap slice of an evaluation.

Records follow the project's JSON Lines schema (``docs/posts.md``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ntulm.artifacts import atomic_path

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ru",
    "ten",
    "sa",
    "vo",
    "ne",
    "pi",
    "da",
    "zu",
    "fe",
    "gor",
    "hal",
    "bri",
]
_SHARED = (
    "the a and to of in is it for on with this that we you they are be was have not but all "
    "today now new just more about time people day good great see like get go"
).split()
_POSITIVE = ["love", "great", "happy", "win", "best", "proud"]
_NEGATIVE = ["hate", "awful", "sad", "lose", "worst", "angry"]


def _word(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(_SYLLABLES, size=n))


def generate_posts(
    n_posts: int = 2000,
    n_communities: int = 4,
    users_per_community: int = 25,
    hashtags_per_community: int = 12,
    words_per_community: int = 40,
    purity: float = 0.8,
    newcomers: float = 0.1,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Yield ``n_posts`` post records (dicts in the project's JSON Lines schema)."""
    if not 0.0 <= purity <= 1.0:
        raise ValueError("purity must be within [0, 1]")
    rng = np.random.default_rng(seed)
    comms = []
    for c in range(n_communities):
        comms.append(
            {
                "name": f"community_{c}",
                "users": [f"c{c}_user{i}" for i in range(users_per_community)],
                "tags": [f"{_word(rng, 2)}{c}{i}" for i in range(hashtags_per_community)],
                "words": [_word(rng, 3) for _ in range(words_per_community)],
                "domain": f"{_word(rng, 2)}{c}.example",
            }
        )
    tag_p = 1.0 / np.arange(1, hashtags_per_community + 1)  # Zipf-like hashtag popularity
    tag_p /= tag_p.sum()
    seen_ids: list[str] = []
    for i in range(n_posts):
        c = int(rng.integers(n_communities))
        comm = comms[c]
        newcomer = bool(rng.random() < newcomers)
        author = (
            f"new{i}_c{c}" if newcomer else comm["users"][int(rng.integers(users_per_community))]
        )
        n_words = int(rng.integers(6, 16))
        words = []
        for _ in range(n_words):
            r = rng.random()
            if r < purity:
                words.append(comm["words"][int(rng.integers(words_per_community))])
            elif r < purity + (1 - purity) / 2:
                words.append(_SHARED[int(rng.integers(len(_SHARED)))])
            else:
                other = comms[int(rng.integers(n_communities))]
                words.append(other["words"][int(rng.integers(words_per_community))])
        positive = bool(rng.random() < 0.5)
        sentiment = _POSITIVE if positive else _NEGATIVE
        words.insert(
            int(rng.integers(len(words) + 1)), sentiment[int(rng.integers(len(sentiment)))]
        )
        n_tags = 0 if newcomer else int(rng.choice([0, 1, 1, 2, 3]))
        tags = list(dict.fromkeys(rng.choice(comm["tags"], size=n_tags, p=tag_p).tolist()))
        mentions = []
        if rng.random() < 0.3:
            mentions.append(comm["users"][int(rng.integers(users_per_community))])
        text = " ".join(words)
        if mentions:
            text = f"@{mentions[0]} " + text
        text += "".join(f" #{t}" for t in tags)
        rec: dict[str, Any] = {
            "id": f"p{i:07d}",
            "text": text,
            "author": author,
            "created_at": f"2022-06-{1 + i * 14 // max(n_posts, 1):02d}T{i % 24:02d}:00:00Z",
            "labels": {"community": comm["name"], "stance": "positive" if positive else "negative"},
        }
        if rng.random() < 0.25:
            rec["urls"] = [f"https://{comm['domain']}/{_word(rng, 2)}"]
            rec["text"] += " " + rec["urls"][0]
        n_fav = int(rng.poisson(1.5))
        if n_fav:
            rec["favorited_by"] = sorted(set(rng.choice(comm["users"], size=n_fav).tolist()))
        if rng.random() < 0.15:
            rec["retweeted_by"] = [comm["users"][int(rng.integers(users_per_community))]]
        if seen_ids and rng.random() < 0.1:
            rec["reply_to_id"] = seen_ids[int(rng.integers(len(seen_ids)))]
        seen_ids.append(rec["id"])
        yield rec


def write_corpus(path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`generate_posts` as JSON Lines (gzipped if ``path`` ends in ``.gz``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as fh:
            for rec in generate_posts(**kwargs):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path
