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
import zlib
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


# --- the same posts as Twitter API v1.1 objects (benchmarks and reader tests) ----------------

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _v1_user(handle: str) -> dict[str, Any]:
    """A full v1.1 user object, as the streaming API sends it (most fields unused by readers)."""
    uid = 10_000_000 + (zlib.crc32(handle.encode()) % 900_000_000)
    return {
        "id": uid, "id_str": str(uid), "name": handle.replace("_", " ").title(),
        "screen_name": handle, "location": "Somewhere", "url": None,
        "description": f"Synthetic account {handle}. Not a real person.",
        "translator_type": "none", "protected": False, "verified": False,
        "followers_count": uid % 5000, "friends_count": uid % 700, "listed_count": 3,
        "favourites_count": uid % 9000, "statuses_count": uid % 20000,
        "created_at": "Tue Mar 03 11:22:33 +0000 2015", "utc_offset": None, "time_zone": None,
        "geo_enabled": False, "lang": None, "contributors_enabled": False,
        "is_translator": False, "profile_background_color": "C0DEED",
        "profile_image_url_https": f"https://pbs.twimg.com/profile_images/{uid}/a_normal.jpg",
        "default_profile": True, "default_profile_image": False, "following": None,
        "follow_request_sent": None, "notifications": None,
    }  # fmt: skip


def _v1_entities(text: str, rec: dict[str, Any]) -> dict[str, Any]:
    import re

    def span(token: str) -> list[int]:
        at = max(text.find(token), 0)
        return [at, at + len(token)]

    return {
        "hashtags": [
            {"text": m.group(1), "indices": list(m.span())} for m in re.finditer(r"#(\w+)", text)
        ],
        "symbols": [],
        "user_mentions": [
            {**{k: u[k] for k in ("screen_name", "name", "id", "id_str")}, "indices": span("@" + h)}
            for h in re.findall(r"@(\w+)", text)
            for u in [_v1_user(h)]
        ],
        "urls": [
            {
                "url": f"https://t.co/{zlib.crc32(u.encode()):x}",
                "expanded_url": u,
                "display_url": u.split("://", 1)[-1][:26],
                "indices": span(u),
            }
            for u in rec.get("urls", [])
        ],  # fmt: skip
    }


def v1_tweets(**kwargs: Any) -> Iterator[dict[str, Any]]:
    """:func:`generate_posts` as realistic Twitter API v1.1 objects: full user objects, entities
    with indices, every 5th an ``extended_tweet`` (long form), every 7th a retweet (the original
    in ``retweeted_status``), replies with ``in_reply_to_*``, every 11th quoting another tweet."""
    for i, rec in enumerate(generate_posts(**kwargs)):
        tid = 1_000_000_000_000_000_000 + i
        day = 1 + int(rec["created_at"][8:10]) - 1
        hour = int(rec["created_at"][11:13])
        created = f"{_WEEKDAYS[(day + 1) % 7]} Jun {day:02d} {hour:02d}:{i % 60:02d}:{(7 * i) % 60:02d} +0000 2022"  # fmt: skip
        text, author = rec["text"], rec["author"]
        status: dict[str, Any] = {
            "created_at": created, "id": tid, "id_str": str(tid), "text": text,
            "source": '<a href="https://example.org" rel="nofollow">synthetic</a>',
            "truncated": False, "in_reply_to_status_id": None, "in_reply_to_status_id_str": None,
            "in_reply_to_user_id": None, "in_reply_to_user_id_str": None,
            "in_reply_to_screen_name": None, "user": _v1_user(author), "geo": None,
            "coordinates": None, "place": None, "contributors": None, "is_quote_status": False,
            "quote_count": 0, "reply_count": 0, "retweet_count": 0, "favorite_count": 0,
            "entities": _v1_entities(text, rec), "favorited": False, "retweeted": False,
            "filter_level": "low", "lang": "en", "timestamp_ms": str(1654041600000 + i),
        }  # fmt: skip
        if i % 5 == 0:  # a long tweet: the short form is truncated, the full one in extended_tweet
            status["truncated"] = True
            status["text"] = text[:40] + "\u2026 https://t.co/more"
            status["entities"] = {"hashtags": [], "symbols": [], "user_mentions": [], "urls": []}
            status["extended_tweet"] = {
                "full_text": text + " &amp; more",
                "display_text_range": [0, len(text)],
                "entities": _v1_entities(text, rec),
            }
        if "reply_to_id" in rec:
            reply_to = int(rec["reply_to_id"][1:])
            user = _v1_user(f"c0_user{reply_to % 25}")
            status.update(
                in_reply_to_status_id=1_000_000_000_000_000_000 + reply_to,
                in_reply_to_status_id_str=str(1_000_000_000_000_000_000 + reply_to),
                in_reply_to_user_id=user["id"], in_reply_to_user_id_str=user["id_str"],
                in_reply_to_screen_name=user["screen_name"],
            )  # fmt: skip
        if i % 11 == 3 and i > 0:
            status["is_quote_status"] = True
            status["quoted_status_id_str"] = str(tid - 1)
            status["quoted_status"] = {
                "id_str": str(tid - 1),
                "text": "quoted #q",
                "user": _v1_user("q"),
            }
        if i % 7 == 6:  # a retweet of this status by someone in rec["retweeted_by"] or a newcomer
            by = (rec.get("retweeted_by") or [f"rt{i}"])[0]
            rt_id = tid + 500_000_000
            short = f"RT @{author}: {text}"[:140]
            status = {
                **{k: status[k] for k in ("created_at", "source", "lang", "timestamp_ms")},
                "id": rt_id, "id_str": str(rt_id), "text": short, "truncated": False,
                "user": _v1_user(by), "retweeted_status": status,
                "entities": {**_v1_entities(short, {}), "urls": []},
                "in_reply_to_status_id": None, "in_reply_to_status_id_str": None,
                "in_reply_to_user_id": None, "in_reply_to_user_id_str": None,
                "in_reply_to_screen_name": None, "retweet_count": 0, "favorite_count": 0,
            }  # fmt: skip
        yield status


def write_v1_corpus(path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`v1_tweets` as JSON Lines (gzipped if ``path`` ends in ``.gz``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as fh:
            for rec in v1_tweets(**kwargs):
                fh.write(json.dumps(rec) + "\n")
    return path
