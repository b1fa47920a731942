"""Tabular posts: CSV, TSV and Parquet files read through a column mapping, and labels joined
from a side table.

A :class:`Layout` maps post fields to the file's columns::

    text=content,author=screen_name,author_id=user_id,id=tweet_id,created_at=date,party=party

Fields: ``text`` (required), ``id`` (default: ``<file stem>:<line>``), ``author`` (a handle),
``author_id``, ``created_at``, ``hashtags``, ``mentions``, ``urls``, ``media`` (list cells:
``a b``, ``a,b``, ``#a #b``, JSON ``["a", "b"]`` or Python ``['a', 'b']``; Parquet lists as they
are), ``is_retweet``, ``retweet_of_id``, ``retweet_of_author``, ``reply_to_id``,
``reply_to_user``, ``lang``. **Any other name is a label**: ``party=party`` gives every post
``labels["party"]``. NTU lists not mapped are extracted from the text, as for JSON Lines.

The rules, the same for every layout (the IRA one is :data:`IRA`, a built-in mapping):
text is HTML-unescaped; a mapped ``author`` cell that is empty rejects the row; ``author_id``
values that went through a float (``9.06E+17``, ``906000000000000000``) are dropped (the
handle stays the identity), and with ``numeric_ids`` any non-numeric one too; ``created_at``
``YYYY-MM-DD HH:MM:SS`` becomes ISO 8601 and Twitter's ``Wed Oct 10 20:19:24 +0000 2018``
too; ``is_retweet`` is a boolean (``1/0``, ``true/false``, ``yes/no``, empty = false; anything
else rejects the row); a retweet whose text starts ``RT @x:`` gets ``retweet_of_author`` x (and
x is no mention); ``lang`` ``English`` becomes ``en``; labels are stripped, empty ones absent.

:class:`SideLabels` joins labels from another table (CSV/TSV/Parquet) onto posts of any
format, by author (id or handle) or by post id; see ``docs/posts.md``.
"""

from __future__ import annotations

import ast
import csv
import html
import io
import itertools
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ntulm.errors import InputError
from ntulm.posts.extract import extract_ntus, normalize_handle, normalize_hashtag
from ntulm.posts.schema import Post, UserRef

if TYPE_CHECKING:
    from ntulm.posts.readers import PostReader, Quarantine

log = logging.getLogger(__name__)

FIELDS = (
    "id", "text", "author", "author_id", "created_at", "hashtags", "mentions", "urls", "media",
    "is_retweet", "retweet_of_id", "retweet_of_author", "reply_to_id", "reply_to_user", "lang",
)  # fmt: skip
_LISTS = ("hashtags", "mentions", "urls", "media")
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"", "0", "false", "f", "no", "n"}
_RT_PREFIX = re.compile(r"^RT @([A-Za-z0-9_]{1,15}):")
# Ids that went through a float: 906000000000000000 stands for many accounts.
_ROUNDED_ID = re.compile(r"^\d{6,}0{6}$|[eE.]")
_ISO_SPACE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")
PARQUET_MAGIC = b"PAR1"


class LayoutError(ValueError):
    """A column mapping that cannot be used."""


@dataclass(frozen=True)
class Layout:
    """Post field or label name -> column name; ``required`` columns must be in the header
    (default: every mapped column); ``numeric_ids`` drops author ids that are not numbers."""

    columns: Mapping[str, str]
    required: tuple[str, ...] | None = None
    numeric_ids: bool = False
    name: str = "table"

    def __post_init__(self) -> None:
        if "text" not in self.columns:
            raise LayoutError("a column mapping needs text=<column>")
        for key, col in self.columns.items():
            if not key or not isinstance(col, str) or not col:
                raise LayoutError(f"mapping {key!r} -> {col!r}: give name=column")

    @property
    def labels(self) -> dict[str, str]:
        """Label name -> column: the mapped names that are not post fields."""
        return {k: c for k, c in self.columns.items() if k not in FIELDS}

    @property
    def needed(self) -> tuple[str, ...]:
        return self.required if self.required is not None else tuple(self.columns.values())


# FiveThirtyEight's IRA tweets CSV, as a mapping (its label and language columns are optional).
IRA = Layout(
    columns={
        "author_id": "external_author_id",
        "author": "author",
        "text": "content",
        "created_at": "publish_date",
        "is_retweet": "retweet",
        "lang": "language",
        "account_category": "account_category",
        "account_type": "account_type",
        "region": "region",
        "post_type": "post_type",
    },
    required=("external_author_id", "author", "content", "publish_date"),
    numeric_ids=True,
    name="ira",
)
PRESETS = {"ira": IRA}


def parse_columns(value: str | Mapping[str, str] | None) -> Layout | None:
    """A layout from ``"text=content,author=user"``, a preset name (``ira``) or a mapping."""
    if value is None or (not isinstance(value, str) and not value):
        return None
    if isinstance(value, str):
        value = value.strip()
        if value in PRESETS:
            return PRESETS[value]
        pairs: dict[str, str] = {}
        for item in value.split(","):
            if "=" not in item:
                raise LayoutError(
                    f"column mapping {item!r}: expected name=column (or a preset: "
                    f"{', '.join(PRESETS)})"
                )
            key, col = (s.strip() for s in item.split("=", 1))
            if key in pairs:
                raise LayoutError(f"column mapping: {key!r} given twice")
            pairs[key] = col
        value = pairs
    return Layout(columns=dict(value))


# --- one row -> one post ------------------------------------------------------------------


def _cell(row: Mapping[str, Any], col: str | None) -> Any:
    return None if col is None else row.get(col)


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else str(value)


def _list(value: Any, what: str) -> list[str]:
    """A list cell: a Parquet list, JSON / Python list text, or separated items."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [_str(v).strip() for v in value if _str(v).strip()]
    text = _str(value).strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            try:
                items = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                from ntulm.posts.formats import RecordError

                raise RecordError(f"field '{what}': unreadable list {text[:80]!r}") from None
        if not isinstance(items, list):
            from ntulm.posts.formats import RecordError

            raise RecordError(f"field '{what}': not a list")
        return [_str(v).strip() for v in items if _str(v).strip()]
    return [s for s in re.split(r"[\s,;|]+", text) if s]


def _bool(value: Any, col: str) -> bool:
    if isinstance(value, bool):
        return value
    v = _str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    from ntulm.posts.formats import RecordError

    raise RecordError(f"column '{col}': {_str(value)[:40]!r} is not a boolean (1/0, true/false)")


def _time(value: Any) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    v = _str(value).strip()
    if not v:
        return None
    if _ISO_SPACE.fullmatch(v):
        return v.replace(" ", "T", 1)
    try:
        return datetime.strptime(v, "%a %b %d %H:%M:%S %z %Y").isoformat()
    except ValueError:
        return v


def _user(value: Any) -> UserRef | None:
    v = _str(value).strip()
    if not v:
        return None
    if v.isdigit():
        return UserRef(id=v)
    h = normalize_handle(v)
    return UserRef(handle=h) if h else None


def parse_row(row: Mapping[str, Any], layout: Layout, row_id: str) -> Post:
    """One row (column -> cell; ``None`` where the file has no such column) -> :class:`Post`
    under ``layout``; raises :class:`~ntulm.posts.formats.RecordError` for a bad row."""
    from ntulm.posts.formats import RecordError

    cols = layout.columns
    for col in layout.needed:
        if row.get(col) is None:
            raise RecordError(f"missing column '{col}' (row has {len(row)} fields)")
    author = None
    if "author" in cols or "author_id" in cols:
        handle = None
        if "author" in cols:
            handle = normalize_handle(_str(_cell(row, cols["author"])))
            if not handle:
                raise RecordError("empty 'author'")
        uid = _str(_cell(row, cols.get("author_id"))).strip()
        if _ROUNDED_ID.search(uid) or (layout.numeric_ids and not uid.isdigit()):
            uid = ""
        if handle or uid:
            author = UserRef(id=uid or None, handle=handle)
    text = html.unescape(_str(_cell(row, cols["text"])))
    tags, handles, urls, media = extract_ntus(text)
    if "hashtags" in cols:
        tags = [
            normalize_hashtag(t.lstrip("#＃")) for t in _list(row.get(cols["hashtags"]), "hashtags")
        ]
        tags = list(dict.fromkeys(t for t in tags if t))
    mentions = [UserRef(handle=h) for h in handles]
    if "mentions" in cols:
        refs = (_user(m) for m in _list(row.get(cols["mentions"]), "mentions"))
        mentions = list(dict.fromkeys(r for r in refs if r is not None))
    if "urls" in cols:
        urls = _list(row.get(cols["urls"]), "urls")
    if "media" in cols:
        media = _list(row.get(cols["media"]), "media")
    row_key = _str(_cell(row, cols.get("id"))).strip() if "id" in cols else row_id
    if not row_key:
        raise RecordError(f"empty id (column '{cols['id']}')")
    is_rt = (
        _bool(row.get(cols["is_retweet"]), cols["is_retweet"]) if "is_retweet" in cols else False
    )
    lang = _str(_cell(row, cols.get("lang"))).strip() or None
    post = Post(
        id=row_key,
        text=text,
        author=author,
        created_at=_time(_cell(row, cols.get("created_at"))),
        hashtags=tags,
        mentions=mentions,
        urls=urls,
        media=media,
        is_retweet=is_rt,
        retweet_of_id=_str(_cell(row, cols.get("retweet_of_id"))).strip() or None,
        retweet_of_author=_user(_cell(row, cols.get("retweet_of_author"))),
        reply_to_id=_str(_cell(row, cols.get("reply_to_id"))).strip() or None,
        reply_to_user=_user(_cell(row, cols.get("reply_to_user"))),
        lang="en" if lang is not None and lang.lower() == "english" else lang,
        labels={k: v for k, c in layout.labels.items() if (v := _str(row.get(c)).strip())},
    )
    if is_rt and post.retweet_of_author is None and (m := _RT_PREFIX.match(text)):
        # The "RT @x:" prefix names the original author, who is not mentioned in the post.
        post.retweet_of_author = UserRef(handle=m.group(1).lower())
        post.mentions = [u for u in post.mentions if u != post.retweet_of_author]
    return post


# --- files --------------------------------------------------------------------------------


def is_parquet(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == PARQUET_MAGIC


def _delimiter(header_line: str, path: Path) -> str:
    names = path.name.lower()
    if ".tsv" in names or ".tab" in names:
        return "\t"
    return "\t" if header_line.count("\t") > header_line.count(",") else ","


def header_of(path: Path) -> list[str]:
    """The column names of a CSV/TSV (gzip ok) or Parquet file."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    from ntulm.posts.readers import open_text

    with open_text(path) as fh:
        first = fh.readline()
    return next(csv.reader([first], delimiter=_delimiter(first, path)), [])


def check_header(name: str, header: list[str], layout: Layout) -> None:
    missing = [c for c in layout.needed if c not in header]
    if missing:
        mapped = {c: k for k, c in layout.columns.items()}
        what = ", ".join(f"{c} (for {mapped.get(c, c)})" for c in missing)
        raise InputError(name, 1, f"header lacks column(s) {what}; it has {', '.join(header[:30])}")


def table_records(
    reader: PostReader, path: Path, q: Quarantine, layout: Layout
) -> Iterator[tuple[Post, int, Any]]:
    """``(post, line, raw)`` of every good row of a CSV/TSV/Parquet file; bad rows are rejected
    through ``reader`` (counted, quarantined with file and line). A Parquet file's row N counts
    as line N + 1, as if under a header line, so a table gives the same ids as CSV or Parquet."""
    if is_parquet(path):
        yield from _parquet_records(reader, path, q, layout)
    else:
        yield from _csv_records(reader, path, q, layout)


def _csv_records(
    reader: PostReader, path: Path, q: Quarantine, layout: Layout
) -> Iterator[tuple[Post, int, Any]]:
    from ntulm.posts.formats import RecordError
    from ntulm.posts.readers import open_text

    name, stem = str(path), reader.id_prefix(path)
    with open_text(path) as fh:
        first = fh.readline()
        delim = _delimiter(first, path)
        rows = csv.reader(itertools.chain([first], fh), delimiter=delim)
        try:
            header = next(rows)
        except StopIteration:
            return
        check_header(name, header, layout)
        start = rows.line_num + 1
        for row in rows:
            line, start = start, rows.line_num + 1
            raw = delim.join(row)
            if _SURROGATE.search(raw):  # bytes that were not UTF-8 (kept by surrogateescape)
                reader._reject(
                    q, name, line, "invalid UTF-8", raw.encode("utf-8", "surrogateescape")
                )
                continue
            if len(row) != len(header):
                reader._reject(q, name, line, f"expected {len(header)} fields, got {len(row)}", raw)
                continue
            try:
                post = parse_row(dict(zip(header, row, strict=True)), layout, f"{stem}:{line}")
            except RecordError as exc:
                reader._reject(q, name, line, str(exc), raw)
                continue
            yield post, line, raw


_SURROGATE = re.compile("[\udc80-\udcff]")


def _parquet_records(
    reader: PostReader, path: Path, q: Quarantine, layout: Layout
) -> Iterator[tuple[Post, int, Any]]:
    import pyarrow.parquet as pq

    from ntulm.posts.formats import RecordError

    name, stem = str(path), reader.id_prefix(path)
    pf = pq.ParquetFile(path)
    check_header(name, list(pf.schema_arrow.names), layout)
    wanted = [c for c in dict.fromkeys(layout.columns.values()) if c in pf.schema_arrow.names]
    line = 1  # row N is "line" N + 1, as in a CSV under its header line
    for batch in pf.iter_batches(batch_size=10_000, columns=wanted):
        for row in batch.to_pylist():
            line += 1
            try:
                yield parse_row(row, layout, f"{stem}:{line}"), line, row
            except RecordError as exc:
                reader._reject(q, name, line, str(exc), row)


# --- labels from a side table -------------------------------------------------------------


@dataclass
class SideLabels:
    """Labels from a side table (CSV/TSV/Parquet, gzip ok for CSV) joined onto posts.

    ``by="author"``: the ``key`` column holds author ids or handles (``@`` optional, any case);
    a post gets the row of its author's id, else of its handle. ``by="id"``: the post id.
    ``columns``: label name -> column (default: every other column, under its own name).
    The side table's own labels win over a post's labels of the same name only with
    ``overwrite``. A key given twice with different labels is an error naming both lines."""

    path: str
    by: str = "author"
    key: str | None = None
    columns: Mapping[str, str] | None = None
    overwrite: bool = False
    _table: dict[str, dict[str, str]] | None = field(default=None, init=False, repr=False)
    _key_of_id: bool = field(default=False, init=False, repr=False)

    def load(self) -> dict[str, dict[str, str]]:
        if self._table is not None:
            return self._table
        if self.by not in ("author", "id"):
            raise InputError(self.path, None, f"labels by {self.by!r}: use author or id")
        path = Path(self.path)
        try:
            rows, header = _side_rows(path)
        except OSError as exc:
            raise InputError(self.path, None, f"cannot read labels: {exc}") from None
        key = self.key or header[0]
        if key not in header:
            raise InputError(self.path, 1, f"no key column {key!r} (columns: {', '.join(header)})")
        cols = dict(self.columns or {c: c for c in header if c != key})
        missing = [c for c in cols.values() if c not in header]
        if missing:
            raise InputError(self.path, 1, f"no column(s) {', '.join(missing)}")
        table: dict[str, dict[str, str]] = {}
        first_line: dict[str, int] = {}
        for line, row in rows:
            k = _str(row.get(key)).strip()
            if not k:
                continue
            if self.by == "author":
                k = k.lower().lstrip("@")
            labels = {n: v for n, c in cols.items() if (v := _str(row.get(c)).strip())}
            if k in table and table[k] != labels:
                raise InputError(
                    self.path,
                    line,
                    f"key {k!r} given twice with different labels (first on line "
                    f"{first_line[k]}): {table[k]} vs {labels}",
                )
            table[k] = labels
            first_line.setdefault(k, line)
        log.info("%s: labels %s for %d keys (by %s)", self.path, list(cols), len(table), self.by)
        self._table = table
        return table

    def _lookup(self, post_id: str | None, author: Any) -> dict[str, str] | None:
        table = self.load()
        if self.by == "id":
            return table.get(post_id) if post_id is not None else None
        if author is None:
            return None
        uid, handle = (author.id, author.handle) if isinstance(author, UserRef) else (
            author.get("id"), author.get("handle")
        )  # fmt: skip
        if uid and uid.lower() in table:
            return table[uid.lower()]
        if handle and handle.lower() in table:
            return table[handle.lower()]
        return None

    def _merge(self, own: dict[str, str], side: dict[str, str]) -> dict[str, str]:
        return {**own, **side} if self.overwrite else {**side, **own}

    def apply_post(self, post: Post) -> bool:
        """Join onto one post; whether it matched a row."""
        side = self._lookup(post.id, post.author)
        if side is None:
            return False
        post.labels = self._merge(post.labels, side)
        return True

    def apply_table(self, table: pa.Table) -> tuple[pa.Table, int]:
        """Join onto a :data:`~ntulm.posts.schema.POSTS_SCHEMA` table; rows matched."""
        ids = table.column("id").to_pylist()
        authors = table.column("author").to_pylist()
        labels = table.column("labels").to_pylist()
        matched = 0
        out = []
        for pid, author, own in zip(ids, authors, labels, strict=True):
            side = self._lookup(pid, author)
            if side is None:
                out.append(own)
                continue
            matched += 1
            out.append(list(self._merge(dict(own or []), side).items()))
        i = table.schema.get_field_index("labels")
        column = pa.array(out, type=table.schema.field("labels").type)
        return table.set_column(i, table.schema.field("labels"), column), matched


def _side_rows(path: Path) -> tuple[Iterator[tuple[int, dict[str, Any]]], list[str]]:
    if is_parquet(path):
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        return ((i, r) for i, r in enumerate(t.to_pylist(), 1)), list(t.column_names)
    from ntulm.posts.readers import open_text

    with open_text(path) as fh:
        text = fh.read()
    first = text.split("\n", 1)[0]
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first, path))
    header = next(rows, [])
    if not header:
        raise InputError(str(path), None, "empty labels table")
    out = []
    start = rows.line_num + 1  # the line a record starts on (quoted fields may span lines)
    for row in rows:
        line, start = start, rows.line_num + 1
        if not row:
            continue
        if len(row) != len(header):
            raise InputError(str(path), line, f"expected {len(header)} fields, got {len(row)}")
        out.append((line, dict(zip(header, row, strict=True))))
    return iter(out), header


def side_labels(specs: list[Mapping[str, Any]] | None) -> tuple[SideLabels, ...]:
    """:class:`SideLabels` from config entries ``{path, by, key, columns, overwrite}``."""
    return tuple(SideLabels(**dict(s)) for s in specs or [])
