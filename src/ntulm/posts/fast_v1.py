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
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
import pyarrow as pa
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
_USER_TYPE = POSTS_SCHEMA.field("author").type
_CHUNK_SCHEMA = POSTS_SCHEMA.remove(POSTS_SCHEMA.get_field_index("source")).append(
    pa.field("_line", pa.int64())
)


def _table(rows: list[tuple], lines: list[int]) -> pa.Table:
    """Rows of :func:`_row` (fields :data:`_ROW_FIELDS`; users as ``(id, handle)`` tuples) ->
    :data:`POSTS_SCHEMA` without ``source``, plus ``_line`` (last)."""
    n = len(rows)
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(_ROW_FIELDS)
    arrays = {
        f: pa.array(c, _CHUNK_SCHEMA.field(f).type) for f, c in zip(_ROW_FIELDS, cols, strict=True)
    }
    zeros = pa.array(np.zeros(n + 1, dtype=np.int32))
    no_users = pa.ListArray.from_arrays(zeros, pa.array([], _USER_TYPE))
    arrays.update(favorited_by=no_users, retweeted_by=no_users, replied_by=no_users)
    arrays["labels"] = pa.MapArray.from_arrays(
        zeros, pa.array([], pa.string()), pa.array([], pa.string())
    )
    arrays["_line"] = pa.array(lines, pa.int64())
    return pa.Table.from_arrays([arrays[f] for f in _CHUNK_SCHEMA.names], schema=_CHUNK_SCHEMA)


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


_NO_ENTITIES = _Entities()  # a struct equal to this one came from ``{}`` (falsy to the reference)
_NO_EXT_ENTITIES = _ExtEntities()


def _row(t: _Tweet, max_chars: int, tag_norm: _Cache, domain: _Cache) -> tuple:
    """The reference's post of one decoded tweet as column values (:data:`_ROW_FIELDS`);
    :class:`_Slow` (or any error) sends the record to the reference."""
    tid = t.id_str
    if tid is UNSET:
        tid = t.id
        if tid is UNSET:
            raise _Slow
    if t.user is UNSET:
        raise _Slow
    author = _user(t.user)
    rt = t.retweeted_status
    src: _Status = rt if isinstance(rt, _Status) else t
    ext = src.extended_tweet
    if not isinstance(ext, _Extended):
        ext = None
    # ``ext.get("full_text") or src.get("full_text") or src.get("text")``; UNSET and None are
    # falsy, and a falsy last value is no usable text (rejected by the reference)
    text = (ext is not None and ext.full_text) or src.full_text or src.text
    if not text:
        raise _Slow
    if "&" in text:
        text = html.unescape(text)
    if len(text) > max_chars or not text.strip():
        raise _Slow  # the reference rejects it with its own message
    # ``ext.get("entities") or src.get("entities")``: an empty object is falsy
    entities = ext.entities if ext is not None else None
    if entities is UNSET or entities is None or entities == _NO_ENTITIES:
        entities = src.entities
    if entities is not UNSET and entities is not None:
        hashtags = entities.hashtags
        if hashtags:
            tags = [h for x in hashtags if x.text and (h := tag_norm[x.text])]
            hashtags = list(dict.fromkeys(tags))
        else:
            hashtags = []
        mentions = entities.user_mentions
        mentions = list(dict.fromkeys([_user(m) for m in mentions])) if mentions else []
        urls = entities.urls
        urls = [x for u in urls if (x := u.expanded_url or u.url)] if urls else []
        # ``ext.get("extended_entities") or src.get("extended_entities") or {}``
        ext_ent = ext.extended_entities if ext is not None else None
        if ext_ent is UNSET or ext_ent is None or ext_ent == _NO_EXT_ENTITIES:
            ext_ent = src.extended_entities
        media_objs = (
            ext_ent.media if ext_ent is not UNSET and ext_ent is not None else None
        ) or entities.media
        media = (
            [
                f"{m.type or 'media'}:{_sid(_get(m.id_str, m.id), 'entities.media[].id')}"
                for m in media_objs
            ]
            if media_objs
            else []
        )
    else:
        hashtags, handles, urls, media = extract_ntus(text)
        hashtags = list(dict.fromkeys(h for h in hashtags if h))
        mentions = list(dict.fromkeys((None, h) for h in handles))
    rt_id = rt_author = None
    if src is rt:
        rt_id = _sid(_get(rt.id_str, rt.id), "retweeted_status.id")
        if rt.user is not UNSET:
            rt_author = _user(rt.user)
    reply_id = _get(t.in_reply_to_status_id_str, t.in_reply_to_status_id)
    reply_uid = _get(t.in_reply_to_user_id_str, t.in_reply_to_user_id)
    reply_handle = t.in_reply_to_screen_name
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
        _time(t.created_at),
        hashtags,
        mentions,
        urls,
        [d for u in urls if (d := domain[u])] if urls else [],
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


# A job is a part of the input: a chunk of whole lines (of a decompressed file held in memory),
# or a byte range ``(path, start, end)`` of a file on disk, read by the worker itself, so that
# the parent neither reads nor copies nor sends the bytes. A range holds the lines that *start*
# in it. Its result: (table with the chunk's line numbers in ``_line``, rejects as (line,
# problem, raw), records through the reference, newlines in the part); line numbers count from
# 1 at the part's start, and :func:`v1_tables` adds the newlines of the parts before.
_Job = bytes | tuple[str, int, int]


def _read_range(path: str, start: int, end: int) -> tuple[bytes, int, int]:
    """The lines of ``path`` starting in bytes ``[start, end)``: ``(their bytes, newlines in
    [start, end), the part's line number of the first)``."""
    with open(path, "rb") as fh:
        inside = False  # does the range start inside a line (begun in the range before)?
        if start > 0:
            fh.seek(start - 1)
            inside = fh.read(1) != b"\n"
        buf = fh.read(end - start)
        newlines = buf.count(b"\n")
        if buf and not buf.endswith(b"\n"):  # the last line goes on past the range: finish it
            parts = [buf]
            while block := fh.read(1 << 20):
                cut = block.find(b"\n")
                if cut >= 0:
                    parts.append(block[: cut + 1])
                    break
                parts.append(block)
            buf = b"".join(parts)
    if not inside:
        return buf, newlines, 1
    cut = buf.find(b"\n")  # the end of the line begun before (it may end past the range)
    return (buf[cut + 1 :] if cut >= 0 else b""), newlines, 2


def _job_posts(
    job: _Job, max_chars: int, at_start: bool
) -> tuple[pa.Table, list[tuple[int, str, Any]], int, int]:
    """One job's result (see :data:`_Job`). Pure: runs in workers."""
    if isinstance(job, bytes):
        chunk, newlines, first = job, job.count(b"\n"), 1
    else:
        chunk, newlines, first = _read_range(*job)
    return (*_chunk_posts(chunk, first, max_chars, at_start), newlines)


def _chunk_posts(
    chunk: bytes, first_line: int, max_chars: int, at_start: bool = True
) -> tuple[pa.Table, list[tuple[int, str, Any]], int]:
    """One chunk of whole lines (its first is line ``first_line``; ``at_start``: the first of
    the file, where a BOM may be) -> ``(posts table without ``source``, with ``_line``; rejects
    as (line, problem, raw) in line order, records through the reference)``. Pure."""
    from ntulm.posts.readers import PostReader

    check = PostReader(max_text_chars=max_chars)._check
    # The chunk builds some 10^5 small lists and no cycles: the cyclic GC would only rescan them
    # (a third of the time). It is switched off for the chunk and restored after.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return _chunk_posts_nogc(chunk, first_line, max_chars, at_start, check)
    finally:
        if gc_was_on:
            gc.enable()


def _chunk_posts_nogc(
    chunk: bytes, first_line: int, max_chars: int, at_start: bool, check: Any
) -> tuple[pa.Table, list[tuple[int, str, Any]], int]:
    from ntulm.posts.readers import _Bad, json_line

    tag_norm, domain = _CACHES
    rows: list[tuple] = []
    lines: list[int] = []
    slow: list[tuple[int, Post]] = []
    rejects: list[tuple[int, str, Any]] = []
    utf8 = chunk.isascii() or is_utf8(chunk)  # isascii: a fast scan, no 16 MB str built
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    bom = at_start and first_line == 1
    for lineno, raw in enumerate(body.split(b"\n") if chunk else (), first_line):
        if bom and lineno == 1 and raw.startswith(codecs.BOM_UTF8):
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
    table = _table(rows, lines)
    if slow:
        ref = pa.Table.from_pydict(
            posts_to_columns([p for _, p in slow], [""] * len(slow)), schema=POSTS_SCHEMA
        ).drop_columns(["source"])
        ref = ref.append_column("_line", pa.array([n for n, _ in slow], pa.int64()))
        table = pa.concat_tables([table, ref]).sort_by("_line")
    return table, rejects, len(slow) + len(rejects)


_CACHES = (_Cache(normalize_hashtag), _Cache(url_domain))


def _jobs(path: Path, data: bytes | None, chunk_bytes: int) -> Iterator[_Job]:
    if data is not None:
        yield from _chunks(io.BytesIO(data), chunk_bytes)
        return
    size = path.stat().st_size
    for start in range(0, size, chunk_bytes):
        yield (str(path), start, min(start + chunk_bytes, size))


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
    (decompressed) file, or ``None`` to read it from ``path``. ``workers`` > 1 decodes chunks
    in that many processes (results are taken in file order)."""
    import pyarrow.compute as pc  # here, not in the workers (a third of a second to import)

    name, max_chars = str(path), reader.max_text_chars
    jobs = _jobs(path, data, chunk_bytes)
    pool = None
    try:
        if workers > 1:
            pool = worker_pool(workers)  # spawn; the workers die with this process
            results: Iterator = _ordered(pool, jobs, max_chars, 2 * workers)
        else:
            results = (_job_posts(job, max_chars, i == 0) for i, job in enumerate(jobs))
        before = 0  # newlines before the part
        for table, rejects, n_slow, newlines in results:
            for line, problem, raw in rejects:
                reader._reject(q, name, before + line, problem, raw)
            if n_slow:
                log.debug("%s: %d records through the reference parser", name, n_slow)
            line = pc.add(table.column("_line"), before)
            source = pc.binary_join_element_wise(name + ":", pc.cast(line, pa.string()), "")
            table = table.drop_columns(["_line"]).append_column(
                POSTS_SCHEMA.field("source"), source
            )
            before += newlines
            reader.report.read += table.num_rows
            reader.report.accepted += table.num_rows
            yield table
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _ordered(pool, jobs, max_chars, ahead):  # noqa: ANN001, ANN202
    """Results of :func:`_job_posts` over ``jobs`` in order, ``ahead`` jobs in flight."""
    pending: deque = deque()
    for i, job in enumerate(jobs):
        pending.append(pool.submit(_job_posts, job, max_chars, i == 0))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
