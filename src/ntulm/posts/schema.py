"""The normalised post record that every reader produces and every later stage consumes.

A :class:`Post` holds the text and its non-textual units (NTUs): author, hashtags, mentioned users,
URLs (expanded where the source gives them), media, and engagement lists (favorited_by,
retweeted_by, replied_by). Users are :class:`UserRef` (id where known, handle where known); the
graph stage resolves handle-only references to ids seen elsewhere in the corpus, so a user has one
identity across formats.

The project's own JSON Lines format is this record, one object per line (see ``docs/posts.md``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ntulm.posts.ntus import NTU_TYPES  # noqa: F401 - the registry is posts/ntus.py


@dataclass(frozen=True, slots=True)
class UserRef:
    """A user: Twitter-style numeric id (as a string) and/or handle (lower-case, no ``@``)."""

    id: str | None = None
    handle: str | None = None

    @property
    def key(self) -> str:
        """Identity before corpus-level alias resolution: ``id:<id>`` else ``@<handle>``."""
        return f"id:{self.id}" if self.id else f"@{self.handle}"

    def to_json(self) -> dict[str, str] | str:
        if self.id and self.handle:
            return {"id": self.id, "handle": self.handle}
        if self.id:
            return {"id": self.id}
        # a bare string reads back as this handle unless it looks like an id ("id:42")
        return {"handle": self.handle} if str(self.handle).startswith("id:") else str(self.handle)


@dataclass(slots=True)
class Post:
    id: str
    text: str
    author: UserRef | None = None
    created_at: str | None = None
    hashtags: list[str] = field(default_factory=list)
    mentions: list[UserRef] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    media: list[str] = field(default_factory=list)
    favorited_by: list[UserRef] = field(default_factory=list)
    retweeted_by: list[UserRef] = field(default_factory=list)
    replied_by: list[UserRef] = field(default_factory=list)
    # A retweet record: ``author`` retweeted post ``retweet_of_id`` written by ``retweet_of_author``
    # (text and NTUs are the original's).
    is_retweet: bool = False
    retweet_of_id: str | None = None
    retweet_of_author: UserRef | None = None
    reply_to_id: str | None = None
    reply_to_user: UserRef | None = None
    lang: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Users may be given as the JSON Lines files give them: "alice" / "@alice" (a handle),
        # 123 or "id:123" (an id), {"id": ..., "handle": ...}. ``Post(author="alice")`` then
        # means what ``{"author": "alice"}`` means in a file, instead of failing at the NTU lookup.
        for name in _USERS:
            ref = getattr(self, name)
            if ref is not None and not isinstance(ref, UserRef):
                setattr(self, name, _as_user(ref, name))
        for name in _USER_LISTS:
            refs = getattr(self, name)
            if refs and not all(isinstance(u, UserRef) for u in refs):
                users = [_as_user(u, f"{name}[{i}]") for i, u in enumerate(refs)]
                setattr(self, name, list(dict.fromkeys(users)))

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Post:
        """A post from a record of the project's JSON Lines schema (a plain dict, as one line of
        a ``.jsonl`` file), read exactly as the file reader reads it: ``id``, ``text`` and
        ``author`` required; NTU lists not given are extracted from the text. Raises
        ``ValueError`` naming the field for a record the reader would reject."""
        from ntulm.posts.formats import parse_jsonl

        return parse_jsonl(obj)

    def to_json(self) -> dict[str, Any]:
        """The project's JSON Lines record, which reads back as this post: empty fields are left
        out, except the NTU lists (``hashtags``, ``mentions``, ``urls``, ``media``), whose
        absence would make the reader extract them from the text."""
        out: dict[str, Any] = {"id": self.id, "text": self.text}
        for name in ("author", "retweet_of_author", "reply_to_user"):
            ref = getattr(self, name)
            if ref is not None:
                out[name] = ref.to_json()
        for name in ("created_at", "retweet_of_id", "reply_to_id", "lang"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for name in ("hashtags", "urls", "media"):
            out[name] = list(getattr(self, name))
        out["mentions"] = [u.to_json() for u in self.mentions]
        for name in ("favorited_by", "retweeted_by", "replied_by"):
            if getattr(self, name):
                out[name] = [u.to_json() for u in getattr(self, name)]
        if self.is_retweet:
            out["is_retweet"] = True
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_OPT_STR = ("created_at", "retweet_of_id", "reply_to_id", "lang")
_STR_LISTS = ("hashtags", "urls", "media")
_USER_LISTS = ("mentions", "favorited_by", "retweeted_by", "replied_by")
_USERS = ("author", "retweet_of_author", "reply_to_user")


def _user_ok(u: Any) -> bool:
    return (
        isinstance(u, UserRef)
        and (u.id is None or type(u.id) is str)
        and (u.handle is None or type(u.handle) is str)
    )


def invalid_field(post: Post) -> str | None:
    """Why ``post`` cannot enter the posts table, or ``None``: every field of the type
    :data:`POSTS_SCHEMA` holds, and no string with a lone UTF-16 surrogate (``"\ud800"`` parses as
    JSON but no UTF-8 text, hence no Parquet string, can hold it). The readers apply it to every
    post a parser returns, so no ill-typed value gets past reading whatever the format."""
    strings: list[str] = []
    if type(post.id) is not str or not post.id:
        return "field 'id' must be a non-empty string"
    if type(post.text) is not str:
        return "field 'text' must be a string"
    strings += (post.id, post.text)
    for name in _OPT_STR:
        v = getattr(post, name)
        if v is not None:
            if type(v) is not str:
                return f"field '{name}' must be a string"
            strings.append(v)
    for name in _STR_LISTS:
        v = getattr(post, name)
        if type(v) is not list or not all(type(x) is str for x in v):
            return f"field '{name}' must be a list of strings"
        strings += v
    users = [u for u in (getattr(post, n) for n in _USERS) if u is not None]
    for name in _USER_LISTS:
        v = getattr(post, name)
        if type(v) is not list:
            return f"field '{name}' must be a list of users"
        users += v
    for u in users:
        if not _user_ok(u):
            return f"a user must hold string id and handle, got {u!r}"
        strings += (u.id or "", u.handle or "")
    if type(post.is_retweet) is not bool:
        return "field 'is_retweet' must be true or false"
    if type(post.labels) is not dict or not all(
        type(k) is str and type(v) is str for k, v in post.labels.items()
    ):
        return "field 'labels' must map strings to strings"
    strings += post.labels.keys()
    strings += post.labels.values()
    if any(_LONE_SURROGATE.search(x) for x in strings):
        return "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"
    return None


def _as_user(value: Any, field: str) -> UserRef:
    if isinstance(value, UserRef):
        return value
    from ntulm.posts.formats import parse_user  # formats imports this module

    return parse_user(value, field)


_USER = pa.struct([("id", pa.string()), ("handle", pa.string())])

# Arrow layout of the normalised posts table the graph stage queries with DuckDB.
POSTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("author", _USER),
        ("created_at", pa.string()),
        ("hashtags", pa.list_(pa.string())),
        ("mentions", pa.list_(_USER)),
        ("urls", pa.list_(pa.string())),
        ("url_domains", pa.list_(pa.string())),
        ("media", pa.list_(pa.string())),
        ("favorited_by", pa.list_(_USER)),
        ("retweeted_by", pa.list_(_USER)),
        ("replied_by", pa.list_(_USER)),
        ("is_retweet", pa.bool_()),
        ("retweet_of_id", pa.string()),
        ("retweet_of_author", _USER),
        ("reply_to_id", pa.string()),
        ("reply_to_user", _USER),
        ("lang", pa.string()),
        ("labels", pa.map_(pa.string(), pa.string())),
        ("source", pa.string()),
    ]
)


def _user(ref: UserRef | None) -> dict[str, str | None] | None:
    return None if ref is None else {"id": ref.id, "handle": ref.handle}


def posts_to_columns(posts: list[Post], sources: list[str]) -> dict[str, list[Any]]:
    """Column-wise Python lists for :data:`POSTS_SCHEMA` (``source`` is ``file:line``)."""
    from ntulm.posts.extract import url_domain

    cols: dict[str, list[Any]] = {name: [] for name in POSTS_SCHEMA.names}
    for p, src in zip(posts, sources, strict=True):
        cols["id"].append(p.id)
        cols["text"].append(p.text)
        cols["author"].append(_user(p.author))
        cols["created_at"].append(p.created_at)
        cols["hashtags"].append(p.hashtags)
        cols["mentions"].append([_user(u) for u in p.mentions])
        cols["urls"].append(p.urls)
        cols["url_domains"].append([d for d in (url_domain(u) for u in p.urls) if d])
        cols["media"].append(p.media)
        cols["favorited_by"].append([_user(u) for u in p.favorited_by])
        cols["retweeted_by"].append([_user(u) for u in p.retweeted_by])
        cols["replied_by"].append([_user(u) for u in p.replied_by])
        cols["is_retweet"].append(p.is_retweet)
        cols["retweet_of_id"].append(p.retweet_of_id)
        cols["retweet_of_author"].append(_user(p.retweet_of_author))
        cols["reply_to_id"].append(p.reply_to_id)
        cols["reply_to_user"].append(_user(p.reply_to_user))
        cols["lang"].append(p.lang)
        cols["labels"].append(list(p.labels.items()))
        cols["source"].append(src)
    return cols
