"""Record parsers: one raw record of a known format -> :class:`Post`.

Each parser raises :class:`RecordError` with a short problem description for a record it cannot
use; the reader adds the file and line and applies the bad-input policy.

Formats:
- ``jsonl``: the project's own schema (``docs/posts.md``);
- ``twitter_v1``: Twitter API v1.1 tweet objects (``entities``, ``extended_tweet``,
  ``retweeted_status``, ``in_reply_to_*``; ``user`` may be trimmed to its id);
- ``twitter_v2``: Twitter API v2 responses (``data``, ``includes.users/tweets/media``) or bare v2
  tweet objects;
- ``ira_csv``: FiveThirtyEight's IRA tweets CSV layout (a built-in mapping of ``table``);
- ``table``: CSV, TSV or Parquet through a column mapping (:mod:`ntulm.posts.tabular`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ntulm.posts.extract import extract_ntus, normalize_handle, normalize_hashtag
from ntulm.posts.schema import Post, UserRef

IRA_COLUMNS = ("external_author_id", "author", "content", "publish_date")
IRA_LABELS = ("account_category", "account_type", "region", "post_type")


class RecordError(ValueError):
    """A record this parser cannot turn into a post; ``str(exc)`` is the problem."""


def _str_id(value: Any, field: str) -> str:
    if isinstance(value, bool) or value is None:
        raise RecordError(f"field '{field}' must be a string or integer id, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise RecordError(f"field '{field}' must be a non-empty string or integer id")


def parse_user(value: Any, field: str = "user") -> UserRef:
    """Project schema user: ``"alice"`` / ``"@alice"`` (handle), ``123`` or ``"id:123"`` (id), or
    ``{"id": ..., "handle": ...}`` (``screen_name`` / ``username`` accepted for ``handle``)."""
    if isinstance(value, bool):
        raise RecordError(f"field '{field}': a user must be a handle, id or object")
    if isinstance(value, int):
        return UserRef(id=str(value))
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("id:") and value[3:]:
            return UserRef(id=value[3:])
        if normalize_handle(value):
            return UserRef(handle=normalize_handle(value))
        raise RecordError(f"field '{field}': empty user")
    if isinstance(value, dict):
        uid = value.get("id", value.get("id_str"))
        handle = value.get("handle", value.get("screen_name", value.get("username")))
        if handle is not None and not isinstance(handle, str):
            raise RecordError(f"field '{field}.handle' must be a string")
        ref = UserRef(
            id=_str_id(uid, f"{field}.id") if uid is not None else None,
            handle=normalize_handle(handle) if isinstance(handle, str) and handle.strip() else None,
        )
        if ref.id is None and ref.handle is None:
            raise RecordError(f"field '{field}': a user object needs 'id' or 'handle'")
        return ref
    raise RecordError(f"field '{field}': a user must be a handle, id or object")


_user = parse_user


def _str_list(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"field '{field}' must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def _user_list(value: Any, field: str) -> list[UserRef]:
    if not isinstance(value, list):
        raise RecordError(f"field '{field}' must be a list of users")
    return list(dict.fromkeys(_user(v, f"{field}[{i}]") for i, v in enumerate(value)))


def _text(value: Any, field: str = "text") -> str:
    if not isinstance(value, str):
        raise RecordError(f"field '{field}' must be a string")
    return value


_JSONL_FIELDS = {
    "id", "text", "author", "created_at", "hashtags", "mentions", "urls", "media", "favorited_by",
    "retweeted_by", "replied_by", "is_retweet", "retweet_of_id", "retweet_of_author",
    "reply_to_id", "reply_to_user", "lang", "labels",
}  # fmt: skip


def parse_jsonl(obj: Any) -> Post:
    """The project's schema. Required: ``id``, ``text``, ``author`` (null = unknown author).
    Hashtags / mentions / urls / media given in the record are used as they are; those not given
    are extracted from the text."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    for req in ("id", "text", "author"):
        if req not in obj:
            raise RecordError(f"missing required field '{req}'")
    unknown = sorted(set(obj) - _JSONL_FIELDS)
    if unknown:
        raise RecordError(f"unknown field(s) {', '.join(unknown)}")
    text = _text(obj["text"])
    tags, handles, urls, media = extract_ntus(text)
    post = Post(
        id=_str_id(obj["id"], "id"),
        text=text,
        author=None if obj["author"] is None else _user(obj["author"], "author"),
        created_at=_opt_str(obj, "created_at"),
        hashtags=[normalize_hashtag(t) for t in _str_list(obj["hashtags"], "hashtags")]
        if "hashtags" in obj
        else tags,
        mentions=_user_list(obj["mentions"], "mentions")
        if "mentions" in obj
        else [UserRef(handle=h) for h in handles],
        urls=_str_list(obj["urls"], "urls") if "urls" in obj else urls,
        media=_str_list(obj["media"], "media") if "media" in obj else media,
        favorited_by=_user_list(obj.get("favorited_by", []), "favorited_by"),
        retweeted_by=_user_list(obj.get("retweeted_by", []), "retweeted_by"),
        replied_by=_user_list(obj.get("replied_by", []), "replied_by"),
        is_retweet=_opt_bool(obj, "is_retweet"),
        retweet_of_id=_opt_id(obj, "retweet_of_id"),
        retweet_of_author=_opt_user(obj, "retweet_of_author"),
        reply_to_id=_opt_id(obj, "reply_to_id"),
        reply_to_user=_opt_user(obj, "reply_to_user"),
        lang=_opt_str(obj, "lang"),
        labels=_labels(obj.get("labels", {})),
    )
    post.hashtags = list(dict.fromkeys(h for h in post.hashtags if h))
    return post


def _opt_str(obj: dict[str, Any], field: str) -> str | None:
    v = obj.get(field)
    if v is None:
        return None
    if not isinstance(v, str):
        raise RecordError(f"field '{field}' must be a string")
    return v


def _opt_bool(obj: dict[str, Any], field: str) -> bool:
    v = obj.get(field)
    if v is None:
        return False
    if not isinstance(v, bool):  # "no" would be True to bool()
        raise RecordError(f"field '{field}' must be true or false: got {v!r}"[:200])
    return v


def _opt_id(obj: dict[str, Any], field: str) -> str | None:
    return None if obj.get(field) is None else _str_id(obj[field], field)


def _opt_user(obj: dict[str, Any], field: str) -> UserRef | None:
    return None if obj.get(field) is None else _user(obj[field], field)


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RecordError("field 'labels' must be an object of name -> value")
    out = {}
    for k, v in value.items():
        if v is None:
            continue
        if isinstance(v, (dict, list)):
            raise RecordError(f"label '{k}' must be a string, number or boolean")
        out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


# --- Twitter API v1.1 -------------------------------------------------------------------------


def _v1_time(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%a %b %d %H:%M:%S %z %Y").isoformat()
    except ValueError:
        return value


def _v1_user(obj: Any, field: str) -> UserRef:
    if not isinstance(obj, dict):
        raise RecordError(f"field '{field}' must be a user object")
    uid = obj.get("id_str", obj.get("id"))
    handle = obj.get("screen_name")
    if uid is None and not handle:
        raise RecordError(f"field '{field}' has neither id nor screen_name")
    return UserRef(
        id=_str_id(uid, f"{field}.id") if uid is not None else None,
        handle=normalize_handle(handle) if isinstance(handle, str) and handle else None,
    )


def _v1_objects(entities: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """``entities[key]``: a list of objects (absent or null: empty)."""
    items = entities.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise RecordError(f"field 'entities.{key}' must be a list of objects")
    return items


def _v1_str(value: Any, field: str) -> Any:
    if value and not isinstance(value, str):
        raise RecordError(f"field '{field}' must be a string, got {type(value).__name__}")
    return value


def parse_twitter_v1(obj: Any) -> Post:
    if not isinstance(obj, dict):
        raise RecordError(f"expected a tweet object, got {type(obj).__name__}")
    if "id_str" not in obj and "id" not in obj:
        raise RecordError("tweet has no 'id' / 'id_str'")
    if "user" not in obj:
        raise RecordError("tweet has no 'user'")
    author = _v1_user(obj["user"], "user")
    rt = obj.get("retweeted_status")
    src = rt if isinstance(rt, dict) else obj
    ext = src.get("extended_tweet") if isinstance(src.get("extended_tweet"), dict) else {}
    text = ext.get("full_text") or src.get("full_text") or src.get("text")
    if not isinstance(text, str):
        raise RecordError("tweet has no text ('text', 'full_text' or 'extended_tweet.full_text')")
    text = html.unescape(text)
    entities = ext.get("entities") or src.get("entities")
    ext_entities = ext.get("extended_entities") or src.get("extended_entities") or {}
    if isinstance(entities, dict):
        if not isinstance(ext_entities, dict):
            raise RecordError("field 'extended_entities' must be an object")
        hashtags = [
            normalize_hashtag(_v1_str(h.get("text"), "entities.hashtags[].text"))
            for h in _v1_objects(entities, "hashtags")
            if h.get("text")
        ]
        mentions = [
            _v1_user(m, "entities.user_mentions") for m in _v1_objects(entities, "user_mentions")
        ]
        urls = [
            _v1_str(u.get("expanded_url") or u.get("url"), "entities.urls[].expanded_url")
            for u in _v1_objects(entities, "urls")
        ]
        media_objs = _v1_objects(ext_entities, "media") or _v1_objects(entities, "media")
        media = [
            f"{_v1_str(m.get('type'), 'entities.media[].type') or 'media'}:"
            f"{_str_id(m.get('id_str', m.get('id')), 'entities.media[].id')}"
            for m in media_objs
        ]
    else:
        hashtags, handles, urls, media = extract_ntus(text)
        mentions = [UserRef(handle=h) for h in handles]
    post = Post(
        id=_str_id(obj.get("id_str", obj.get("id")), "id"),
        text=text,
        author=author,
        created_at=_v1_time(obj.get("created_at")),
        hashtags=list(dict.fromkeys(h for h in hashtags if h)),
        mentions=list(dict.fromkeys(mentions)),
        urls=[u for u in urls if u],
        media=media,
        lang=obj.get("lang") if isinstance(obj.get("lang"), str) else None,
    )
    if src is rt:
        post.is_retweet = True
        post.retweet_of_id = _str_id(rt.get("id_str", rt.get("id")), "retweeted_status.id")
        if "user" in rt:
            post.retweet_of_author = _v1_user(rt["user"], "retweeted_status.user")
    reply_id = obj.get("in_reply_to_status_id_str", obj.get("in_reply_to_status_id"))
    if reply_id is not None:
        post.reply_to_id = _str_id(reply_id, "in_reply_to_status_id")
    reply_uid = obj.get("in_reply_to_user_id_str", obj.get("in_reply_to_user_id"))
    reply_handle = obj.get("in_reply_to_screen_name")
    if reply_handle is not None and not isinstance(reply_handle, str):
        raise RecordError("field 'in_reply_to_screen_name' must be a string")
    if reply_uid is not None or reply_handle:
        post.reply_to_user = UserRef(
            id=_str_id(reply_uid, "in_reply_to_user_id") if reply_uid is not None else None,
            handle=normalize_handle(reply_handle) if reply_handle else None,
        )
    return post


# --- Twitter API v2 ---------------------------------------------------------------------------
# The fields the parser reads, with their types: msgspec checks a tweet (or a page's includes)
# against them in one call, so a wrong type anywhere is one RecordError naming the field, never
# a crash further on. Fields not declared are ignored.

_V2Id = str | int | None


class _V2Ref(msgspec.Struct):
    type: str | None = None
    id: _V2Id = None


class _V2Tag(msgspec.Struct):
    tag: str | None = None


class _V2Mention(msgspec.Struct):
    id: _V2Id = None
    username: str | None = None


class _V2Url(msgspec.Struct):
    url: str | None = None
    expanded_url: str | None = None
    unwound_url: str | None = None


class _V2Entities(msgspec.Struct):
    hashtags: list[_V2Tag] | None = None
    mentions: list[_V2Mention] | None = None
    urls: list[_V2Url] | None = None


class _V2Note(msgspec.Struct):
    text: str | None = None
    entities: _V2Entities | None = None


class _V2Attachments(msgspec.Struct):
    media_keys: list[str] | None = None


class _V2Tweet(msgspec.Struct):
    id: _V2Id = None
    text: str | None = None
    author_id: _V2Id = None
    created_at: str | None = None
    lang: str | None = None
    referenced_tweets: list[_V2Ref] | None = None
    note_tweet: _V2Note | None = None
    entities: _V2Entities | None = None
    attachments: _V2Attachments | None = None
    in_reply_to_user_id: _V2Id = None


class _V2User(msgspec.Struct):
    id: _V2Id = None
    username: str | None = None


class _V2Media(msgspec.Struct):
    media_key: str | None = None
    type: str | None = None


class _V2Includes(msgspec.Struct):
    users: list[_V2User] | None = None
    tweets: list[_V2Tweet] | None = None
    media: list[_V2Media] | None = None


_EXPECTED = re.compile(r"Expected `(.*)`, got `(.*)`")
_JSON_TYPES = {
    "str": "a string",
    "int | str": "a string or integer id",
    "str | int": "a string or integer id",
    "array": "a list",
    "object": "an object",
}


def _typed(value: Any, typ: type, field: str) -> Any:
    """``value`` as the struct ``typ``, or :class:`RecordError` naming the ill-typed field."""
    try:
        return msgspec.convert(value, typ, strict=True)
    except msgspec.ValidationError as exc:
        msg, _, where = str(exc).partition(" - at `$")
        path = re.sub(r"\[\d+\]", "[]", field + where.rstrip("`")).strip(".")
        if m := _EXPECTED.fullmatch(msg):
            expected = m.group(1).removesuffix(" | null")
            expected = _JSON_TYPES.get(expected, expected)
            raise RecordError(f"field '{path}' must be {expected}, got {m.group(2)}") from None
        raise RecordError(f"field '{path}': {msg}") from None


def iter_twitter_v2(obj: Any) -> Iterator[tuple[Post | RecordError, Any]]:
    """Posts of one v2 response (``data`` list or object + ``includes``) or one bare tweet, each
    with the tweet object it comes from. A tweet that cannot be read comes as a
    :class:`RecordError` in place of its post (the other tweets of the page are kept); a page
    whose ``data`` or ``includes`` is unusable raises it (nothing of the page can be trusted)."""
    if not isinstance(obj, dict):
        raise RecordError(f"expected a v2 response or tweet object, got {type(obj).__name__}")
    if "data" not in obj:
        if "errors" in obj:
            raise RecordError(f"v2 response holds only errors: {str(obj['errors'])[:200]}")
        yield _v2_post(obj, {}, {}, {}), obj
        return
    data = obj["data"]
    if isinstance(data, dict):
        data = [data]
    elif not isinstance(data, list):
        raise RecordError(
            f"field 'data' must be a tweet object or a list of them, got {type(data).__name__}"
        )
    includes = obj.get("includes")
    inc = _V2Includes() if includes is None else _typed(includes, _V2Includes, "includes")
    users = {_str_id(u.id, "includes.users[].id"): u for u in inc.users or () if u.id is not None}
    tweets = {
        _str_id(t.id, "includes.tweets[].id"): t for t in inc.tweets or () if t.id is not None
    }
    media = {m.media_key: m for m in inc.media or () if m.media_key is not None}
    for tweet in data:
        try:
            yield _v2_post(tweet, users, tweets, media), tweet
        except RecordError as exc:
            yield exc, tweet


def _filled(s: msgspec.Struct | None) -> bool:
    """A struct from a non-empty object (``{}`` is falsy to the ``or`` of the dicts it replaces)."""
    return s is not None and any(getattr(s, f) is not None for f in s.__struct_fields__)


def _v2_user(uid: Any, users: dict[str, _V2User], field: str) -> UserRef:
    uid = _str_id(uid, field)
    handle = users[uid].username if uid in users else None
    return UserRef(id=uid, handle=normalize_handle(handle) if handle else None)


def _v2_post(obj: Any, users: dict, tweets: dict, media: dict) -> Post:
    if not isinstance(obj, dict):
        raise RecordError(f"v2 'data' item is not a tweet object, got {type(obj).__name__}")
    t: _V2Tweet = _typed(obj, _V2Tweet, "")
    if t.id is None or t.text is None:
        raise RecordError("v2 tweet needs 'id' and 'text'")
    if t.author_id is None:
        raise RecordError("v2 tweet has no 'author_id' (request tweet.fields=author_id)")
    refs = {r.type: r.id for r in t.referenced_tweets or ()}
    rt_id = refs.get("retweeted")
    src = t
    if rt_id is not None and _str_id(rt_id, "referenced_tweets[].id") in tweets:
        src = tweets[_str_id(rt_id, "referenced_tweets[].id")]  # the original's full text
    note = src.note_tweet
    text = (note.text if note is not None else None) or src.text
    if not isinstance(text, str):
        raise RecordError("field 'includes.tweets[].text' must be a string")
    text = html.unescape(text)
    entities = note.entities if note is not None and _filled(note.entities) else src.entities
    if entities is not None:
        hashtags = [normalize_hashtag(h.tag) for h in entities.hashtags or () if h.tag]
        mentions = [
            UserRef(
                id=_str_id(m.id, "entities.mentions[].id") if m.id not in (None, "") else None,
                handle=normalize_handle(m.username) if m.username else None,
            )
            for m in entities.mentions or ()
            if m.id not in (None, "") or m.username
        ]
        urls = [u.unwound_url or u.expanded_url or u.url for u in entities.urls or ()]
        urls = [u for u in urls if u and "/photo/" not in u and "/video/" not in u]
    else:
        hashtags, handles, urls, _ = extract_ntus(text)
        mentions = [UserRef(handle=h) for h in handles]
    keys = (src.attachments.media_keys if src.attachments is not None else None) or []
    post = Post(
        id=_str_id(t.id, "id"),
        text=text,
        author=_v2_user(t.author_id, users, "author_id"),
        created_at=t.created_at,
        hashtags=list(dict.fromkeys(h for h in hashtags if h)),
        mentions=list(dict.fromkeys(mentions)),
        urls=urls,
        media=[f"{(media[k].type if k in media else None) or 'media'}:{k}" for k in keys],
        lang=t.lang,
    )
    if "retweeted" in refs:
        post.is_retweet = True
        post.retweet_of_id = _str_id(rt_id, "referenced_tweets[].id")
        if src is not t and src.author_id is not None:
            post.retweet_of_author = _v2_user(src.author_id, users, "includes.tweets[].author_id")
    if "replied_to" in refs:
        post.reply_to_id = _str_id(refs["replied_to"], "referenced_tweets[].id")
    if t.in_reply_to_user_id is not None:
        post.reply_to_user = _v2_user(t.in_reply_to_user_id, users, "in_reply_to_user_id")
    return post


# --- FiveThirtyEight IRA CSV ------------------------------------------------------------------


def parse_ira_row(row: dict[str, str | None], row_id: str) -> Post:
    """One CSV row. There are no tweet ids in this data: ``row_id`` (file stem and line) is used.
    The IRA layout is a built-in column mapping of the tabular reader
    (:data:`ntulm.posts.tabular.IRA`); rounded author ids (``906000000000000000``) are dropped:
    the handle is the identity."""
    from ntulm.posts.tabular import IRA, parse_row

    return parse_row(row, IRA, row_id)


# --- the formats ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One input format and its implementation. The reader dispatches on :data:`REGISTRY`, so the
    formats that ``--format``, configs and messages offer are exactly the ones implemented here:
    adding a format is a row (and a test)."""

    name: str
    description: str
    # JSON formats: one parsed record (a line, an array item, a document) -> (post or
    # RecordError, the part of the record it comes from; None: the whole record)
    parse: Callable[[Any], Iterator[tuple[Post | RecordError, Any]]] | None = None
    # tabular formats (parse None): the built-in column mapping (posts/tabular.py PRESETS), or
    # None for the reader's own mapping (--columns)
    preset: str | None = None


def _one(fn: Callable[[Any], Post]) -> Callable[[Any], Iterator[tuple[Post, None]]]:
    """A one-post parser in the ``(post, part)`` shape of the v2 parser."""

    def many(obj: Any) -> Iterator[tuple[Post, None]]:
        yield fn(obj), None

    return many


REGISTRY: dict[str, Format] = {
    f.name: f
    for f in (
        Format("jsonl", "the project's JSON Lines schema (docs/posts.md)", _one(parse_jsonl)),
        Format("twitter_v1", "Twitter API v1.1 tweet objects", _one(parse_twitter_v1)),
        Format("twitter_v2", "Twitter API v2 responses or tweets", iter_twitter_v2),
        Format("ira_csv", "FiveThirtyEight's IRA tweets CSV (or Parquet)", preset="ira"),
        Format("table", "CSV, TSV or Parquet through a column mapping (--columns)"),
    )
}
FORMATS = tuple(REGISTRY)  # what --format accepts besides "auto"


def is_utf8(data: bytes) -> bool:
    """Whether ``data`` decodes as UTF-8 (the fast readers' check before their vectorized path)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
