"""Fast reader for Twitter API v1.1 JSON Lines: typed msgspec decoding straight into the columns of
:data:`~ntulm.posts.schema.POSTS_SCHEMA`, no ``dict`` or :class:`Post` per tweet.

The reference is :func:`~ntulm.posts.formats.parse_twitter_v1` behind
:func:`~ntulm.posts.readers.json_line`; this module is tested equal to it. Each line is decoded
with msgspec into structs that declare only the fields the reference reads, with the types it
expects. A line goes to the reference (parsed, judged, counted and quarantined exactly as by the
Python reader) when:
- msgspec rejects it: malformed JSON, a wrong type anywhere in a declared field (a number as
  hashtag text, a string as ``entities``, a float id), a lone surrogate, nesting too deep, NaN;
- its ``entities`` / ``extended_entities`` hold a key we do not declare (their emptiness decides
  which entities the reference uses, and a struct cannot see an unknown key);
- the reference would reject it or its judgement is needed (no id, no user, no text, empty or too
  long text, an unusable id): any exception while building the row;
- the chunk it is in is not valid UTF-8 (msgspec does not check strings it skips).
"""

from __future__ import annotations

import codecs
import gc
import html
import io
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from msgspec import UNSET, Struct, UnsetType

from ntulm.posts.extract import extract_ntus, normalize_handle, normalize_hashtag, url_domain
from ntulm.posts.formats import RecordError, _str_id, _v1_time, is_utf8, parse_twitter_v1
from ntulm.posts.schema import POSTS_SCHEMA, Post, posts_to_columns
from ntulm.workers import worker_pool

if TYPE_CHECKING:
    from ntulm.posts.readers import PostReader, Quarantine

log = logging.getLogger(__name__)

_Id = int | str | None | UnsetType
_Str = str | None | UnsetType
CHUNK_BYTES = 1 << 24  # bytes per decoded chunk (cut at a line break)


class _User(Struct, gc=False):
    id_str: _Id = UNSET
    id: _Id = UNSET
    screen_name: _Str = UNSET


class _Hashtag(Struct, gc=False):
    text: _Str = UNSET


class _Url(Struct, gc=False):
    expanded_url: _Str = UNSET
    url: _Str = UNSET


class _Media(Struct, gc=False):
    type: _Str = UNSET
    id_str: _Id = UNSET
    id: _Id = UNSET


class _Entities(Struct, forbid_unknown_fields=True, gc=False):
    hashtags: list[_Hashtag] | None | UnsetType = UNSET
    user_mentions: list[_User] | None | UnsetType = UNSET
    urls: list[_Url] | None | UnsetType = UNSET
    media: list[_Media] | None | UnsetType = UNSET
    symbols: Any = UNSET
    polls: Any = UNSET


class _ExtEntities(Struct, forbid_unknown_fields=True, gc=False):
    media: list[_Media] | None | UnsetType = UNSET


class _Extended(Struct, gc=False):
    full_text: _Str = UNSET
    entities: _Entities | None | UnsetType = UNSET
    extended_entities: _ExtEntities | None | UnsetType = UNSET


class _Status(Struct, gc=False):
    """The fields of a retweeted status that the reference reads."""

    id_str: _Id = UNSET
    id: _Id = UNSET
    user: _User | UnsetType = UNSET
    text: _Str = UNSET
    full_text: _Str = UNSET
    extended_tweet: _Extended | None | UnsetType = UNSET
    entities: _Entities | None | UnsetType = UNSET
    extended_entities: _ExtEntities | None | UnsetType = UNSET


class _Tweet(_Status):
    created_at: _Str = UNSET
    lang: _Str = UNSET
    retweeted_status: _Status | None | UnsetType = UNSET
    in_reply_to_status_id_str: _Id = UNSET
    in_reply_to_status_id: _Id = UNSET
    in_reply_to_user_id_str: _Id = UNSET
    in_reply_to_user_id: _Id = UNSET
    in_reply_to_screen_name: _Str = UNSET


_decode = msgspec.json.Decoder(_Tweet).decode


class _Slow(Exception):
    """This record goes through the reference parser."""


def _get(a: Any, b: Any) -> Any:
    """``obj.get("a", obj.get("b"))`` on struct fields (UNSET = key absent)."""
    return (None if b is UNSET else b) if a is UNSET else a


def _empty(s: Any) -> bool:
    """Falsy as the reference's dict would be: absent, null or an object without keys."""
    if s is UNSET or s is None:
        return True
    return all(getattr(s, f) is UNSET for f in s.__struct_fields__)


def _user(u: _User) -> tuple[str | None, str | None]:
    """The reference's ``_v1_user``: ``(id, handle)``, memoised (accounts repeat)."""
    key = (u.id_str, u.id, u.screen_name)
    out = _USERS.get(key)
    if out is not None:
        return out
    uid = _get(u.id_str, u.id)
    handle = u.screen_name
    if uid is None and not handle:
        raise _Slow
    out = (
        _sid(uid, "user.id") if uid is not None else None,
        normalize_handle(handle) if isinstance(handle, str) and handle else None,
    )
    if len(_USERS) >= 200_000:
        _USERS.clear()
    _USERS[key] = out
    return out


_USERS: dict[tuple, tuple[str | None, str | None]] = {}


def _sid(value: Any, field: str) -> str:
    """:func:`~ntulm.posts.formats._str_id` with its two common cases first."""
    if type(value) is str:
        s = value.strip()
        if s:
            return s
    elif type(value) is int:
        return str(value)
    return _str_id(value, field)


_MONTHS = {m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}
_DAYS = frozenset("Mon Tue Wed Thu Fri Sat Sun".split())


def _day(key: str) -> str | None:
    """``"Oct 10 2018"`` -> ``"2018-10-10"``, or ``None`` when not a valid canonical date."""
    parts = key.split(" ")
    if len(parts) != 3:
        return None
    mon, day, year = parts
    if mon not in _MONTHS or not (day + year).isdigit() or not (day + year).isascii():
        return None
    try:
        return datetime(int(year), _MONTHS[mon], int(day)).date().isoformat()
    except ValueError:
        return None


_DATES = {}


def _time(value: Any) -> str | None:
    """``_v1_time`` without ``strptime`` for the canonical ``Wed Oct 10 20:19:24 +0000 2018``."""
    if (
        isinstance(value, str)
        and len(value) == 30
        and value[:3] in _DAYS
        and value[19:26] == " +0000 "
        and value[3] == value[10] == " "
        and value[13] == value[16] == ":"
    ):
        key = value[4:10] + value[25:]
        day = _DATES.get(key)
        if day is None:
            if len(_DATES) > 100_000:
                _DATES.clear()
            day = _DATES[key] = _day(key) or ""
        hms = value[11:19]
        if (
            day
            and hms[:2] < "24"
            and hms[3:5] < "60"
            and hms[6:] < "60"
            and hms.replace(":", "").isdigit()
            and hms.isascii()
        ):
            return f"{day}T{hms}+00:00"
    return _v1_time(value)


_ROW_FIELDS = (
    "id", "text", "author", "created_at", "hashtags", "mentions", "urls", "url_domains", "media",
    "is_retweet", "retweet_of_id", "retweet_of_author", "reply_to_id", "reply_to_user", "lang",
)  # fmt: skip


def _table(rows: list[tuple], lines: list[int], name: str) -> pa.Table:
    """Rows of :func:`_row` (fields :data:`_ROW_FIELDS`) -> :data:`POSTS_SCHEMA` plus ``_line``."""
    n = len(rows)
    cols = dict(zip(_ROW_FIELDS, zip(*rows, strict=True), strict=True)) if rows else None
    if cols is None:
        cols = {f: [] for f in _ROW_FIELDS}
    empty_users = _users_array([[]] * n)
    line = pa.array(lines, pa.int64())
    arrays = {
        "id": pa.array(cols["id"], pa.string()),
        "text": pa.array(cols["text"], pa.string()),
        "author": _user_array(cols["author"]),
        "created_at": pa.array(cols["created_at"], pa.string()),
        "hashtags": _list_array(cols["hashtags"]),
        "mentions": _users_array(cols["mentions"]),
        "urls": _list_array(cols["urls"]),
        "url_domains": _list_array(cols["url_domains"]),
        "media": _list_array(cols["media"]),
        "favorited_by": empty_users,
        "retweeted_by": empty_users,
        "replied_by": empty_users,
        "is_retweet": pa.array(cols["is_retweet"], pa.bool_()),
        "retweet_of_id": pa.array(cols["retweet_of_id"], pa.string()),
        "retweet_of_author": _user_array(cols["retweet_of_author"]),
        "reply_to_id": pa.array(cols["reply_to_id"], pa.string()),
        "reply_to_user": _user_array(cols["reply_to_user"]),
        "lang": pa.array(cols["lang"], pa.string()),
        "labels": pa.MapArray.from_arrays(
            pa.array([0] * (n + 1), pa.int32()),
            pa.array([], pa.string()),
            pa.array([], pa.string()),
        ),
        "source": pc.binary_join_element_wise(name + ":", pc.cast(line, pa.string()), ""),
    }
    table = pa.Table.from_arrays(list(arrays.values()), names=list(arrays)).cast(POSTS_SCHEMA)
    return table.add_column(0, "_line", line)


def _offsets(lists: Sequence[list[Any]]) -> pa.Array:
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, lists), dtype=np.int32, count=len(lists)), out=offsets[1:])
    return pa.array(offsets)


def _list_array(lists: Sequence[list[str]]) -> pa.Array:
    flat = list(chain.from_iterable(lists))
    return pa.ListArray.from_arrays(_offsets(lists), pa.array(flat, pa.string()))


_USER_TYPE = POSTS_SCHEMA.field("author").type


def _user_array(users: list[tuple[str | None, str | None] | None]) -> pa.Array:
    ids = [None if u is None else u[0] for u in users]
    handles = [None if u is None else u[1] for u in users]
    mask = pa.array([u is None for u in users], pa.bool_())
    return pa.StructArray.from_arrays(
        [pa.array(ids, pa.string()), pa.array(handles, pa.string())],
        fields=list(_USER_TYPE),
        mask=mask,
    )


def _users_array(lists: list[list[tuple[str | None, str | None]]]) -> pa.Array:
    flat = list(chain.from_iterable(lists))
    return pa.ListArray.from_arrays(_offsets(lists), _user_array(flat))


class _Cache(dict):
    """A bounded memo of a pure function (hashtags, URL domains repeat across a corpus)."""

    def __init__(self, fn: Any, size: int = 200_000):
        super().__init__()
        self.fn, self.size = fn, size

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.size:
            self.clear()
        value = self[key] = self.fn(key)
        return value


def _row(t: _Tweet, max_chars: int, tag_norm: _Cache, domain: _Cache) -> tuple:
    """The reference's post of one decoded tweet as column values; :class:`_Slow` (or any error)
    sends the record to the reference."""
    tid = _get(t.id_str, t.id)
    if t.id_str is UNSET and t.id is UNSET or t.user is UNSET:
        raise _Slow
    author = _user(t.user)
    rt = t.retweeted_status
    src: _Status = rt if isinstance(rt, _Status) else t
    ext = src.extended_tweet if isinstance(src.extended_tweet, _Extended) else None
    text = (
        (ext.full_text if ext is not None and ext.full_text is not UNSET else None)
        or (None if src.full_text is UNSET else src.full_text)
        or (None if src.text is UNSET else src.text)
    )
    if not isinstance(text, str):
        raise _Slow
    if "&" in text:
        text = html.unescape(text)
    if len(text) > max_chars or not text.strip():
        raise _Slow  # the reference rejects it with its own message
    entities = None
    if ext is not None and not _empty(ext.entities):
        entities = ext.entities
    elif not _empty(src.entities):
        entities = src.entities
    elif src.entities is not UNSET and src.entities is not None:
        entities = src.entities  # {}: a dict all the same
    if entities is not None:
        hashtags = [tag_norm[h.text] for h in entities.hashtags or () if h.text]
        mentions = [_user(m) for m in entities.user_mentions or ()]
        urls = [u.expanded_url or u.url for u in entities.urls or ()]
        urls = [u for u in urls if u]
        ext_ent = None
        if ext is not None and not _empty(ext.extended_entities):
            ext_ent = ext.extended_entities
        elif not _empty(src.extended_entities):
            ext_ent = src.extended_entities
        media_objs = (ext_ent.media if ext_ent is not None else None) or entities.media or ()
        media = [
            f"{m.type or 'media'}:{_sid(_get(m.id_str, m.id), 'entities.media[].id')}"
            for m in media_objs
        ]
    else:
        hashtags, handles, urls, media = extract_ntus(text)
        mentions = [(None, h) for h in handles]
    rt_id = rt_author = None
    if src is rt:
        rt_id = _sid(_get(rt.id_str, rt.id), "retweeted_status.id")
        if rt.user is not UNSET:
            rt_author = _user(rt.user)
    reply_id = _get(t.in_reply_to_status_id_str, t.in_reply_to_status_id)
    reply_uid = _get(t.in_reply_to_user_id_str, t.in_reply_to_user_id)
    reply_handle = None if t.in_reply_to_screen_name is UNSET else t.in_reply_to_screen_name
    reply_user = None
    if reply_uid is not None or reply_handle:
        reply_user = (
            _sid(reply_uid, "in_reply_to_user_id") if reply_uid is not None else None,
            normalize_handle(reply_handle) if reply_handle else None,
        )
    return (
        _sid(tid, "id"),
        text,
        author,
        _time(None if t.created_at is UNSET else t.created_at),
        list(dict.fromkeys(h for h in hashtags if h)),
        list(dict.fromkeys(mentions)),
        urls,
        [d for d in (domain[u] for u in urls) if d],
        media,
        src is rt,
        rt_id,
        rt_author,
        None if reply_id is None else _sid(reply_id, "in_reply_to_status_id"),
        reply_user,
        t.lang if isinstance(t.lang, str) else None,
    )


def _chunks(fh: Any, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file in chunks of whole lines."""
    rest = b""
    while block := fh.read(size):
        block = rest + block
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            rest = block
            continue
        rest = block[cut:]
        yield block[:cut]
    if rest:
        yield rest


def _chunk_posts(
    chunk: bytes, first_line: int, name: str, max_chars: int
) -> tuple[pa.Table, list[tuple[int, str, Any]], int]:
    """One chunk of whole lines (its first is line ``first_line``) -> ``(posts table, rejects as
    (line, problem, raw) in line order, records through the reference)``. Pure: runs in workers."""
    from ntulm.posts.readers import PostReader

    check = PostReader(max_text_chars=max_chars)._check
    # The chunk builds some 10^5 small lists and no cycles: the cyclic GC would only rescan them
    # (a third of the time). It is switched off for the chunk and restored after.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return _chunk_posts_nogc(chunk, first_line, name, max_chars, check)
    finally:
        if gc_was_on:
            gc.enable()


def _chunk_posts_nogc(
    chunk: bytes, first_line: int, name: str, max_chars: int, check: Any
) -> tuple[pa.Table, list[tuple[int, str, Any]], int]:
    from ntulm.posts.readers import _Bad, json_line

    tag_norm, domain = _CACHES
    rows: list[tuple] = []
    lines: list[int] = []
    slow: list[tuple[int, Post]] = []
    rejects: list[tuple[int, str, Any]] = []
    utf8 = chunk.isascii() or is_utf8(chunk)  # isascii: a fast scan, no 16 MB str built
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    for lineno, raw in enumerate(body.split(b"\n") if chunk else (), first_line):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
        if not raw.strip():
            continue
        raw = raw.rstrip(b"\r\n")
        row = None
        if utf8:
            try:
                row = _row(_decode(raw), max_chars, tag_norm, domain)
            except Exception:  # noqa: BLE001 - any doubt: the reference decides
                row = None
        if row is not None:
            rows.append(row)
            lines.append(lineno)
            continue
        obj, qraw = json_line(raw)  # the reference, line for line
        if isinstance(obj, _Bad):
            rejects.append((lineno, obj.problem, qraw))
            continue
        try:
            post = parse_twitter_v1(obj)
        except RecordError as exc:
            rejects.append((lineno, str(exc), qraw))
            continue
        problem = check(post)
        if problem:
            rejects.append((lineno, problem, qraw))
            continue
        slow.append((lineno, post))
    table = _table(rows, lines, name)
    if slow:
        ref = pa.Table.from_pydict(
            posts_to_columns([p for _, p in slow], [f"{name}:{n}" for n, _ in slow]),
            schema=POSTS_SCHEMA,
        )
        ref = ref.add_column(0, "_line", pa.array([n for n, _ in slow], pa.int64()))
        table = pa.concat_tables([table, ref]).sort_by("_line")
    return table.drop_columns(["_line"]), rejects, len(slow) + len(rejects)


_CACHES = (_Cache(normalize_hashtag), _Cache(url_domain))


def _numbered(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, int]]:
    line = 1
    for chunk in chunks:
        yield chunk, line
        line += chunk.count(b"\n")


def v1_tables(
    reader: PostReader,
    path: Path,
    q: Quarantine,
    data: bytes | None,
    *,
    workers: int = 1,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[pa.Table]:
    """Posts of one v1.1 JSON Lines file as :data:`POSTS_SCHEMA` tables (one per chunk), under
    ``reader``'s bad-input policy, identical to the reference reader. ``data``: the whole
    (decompressed) file, or ``None`` to stream it from ``path``. ``workers`` > 1 decodes chunks
    in that many processes (results are taken in file order)."""
    from ntulm.posts.readers import open_binary

    name, max_chars = str(path), reader.max_text_chars
    fh = None if data is not None else open_binary(path)
    pool = None
    try:
        source = io.BytesIO(data) if data is not None else fh
        chunks = _numbered(_chunks(source, chunk_bytes))
        if workers > 1:
            pool = worker_pool(workers)  # spawn; the workers die with this process
            pending: deque = deque()
            results: Iterator = _ordered(pool, pending, chunks, name, max_chars, 2 * workers)
        else:
            results = (_chunk_posts(c, first, name, max_chars) for c, first in chunks)
        for table, rejects, n_slow in results:
            for line, problem, raw in rejects:
                reader._reject(q, name, line, problem, raw)
            if n_slow:
                log.debug("%s: %d records through the reference parser", name, n_slow)
            reader.report.read += table.num_rows
            reader.report.accepted += table.num_rows
            yield table
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if fh is not None:
            fh.close()


def _ordered(pool, pending, chunks, name, max_chars, ahead):  # noqa: ANN001, ANN202
    """Results of :func:`_chunk_posts` over ``chunks`` in order, ``ahead`` chunks in flight."""
    for chunk, first in chunks:
        pending.append(pool.submit(_chunk_posts, chunk, first, name, max_chars))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
