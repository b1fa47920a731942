"""Streaming post readers: files or directories -> ``(Post, source)`` pairs, memory independent of
the number of posts.

- gzip is detected by its magic bytes, not the file name;
- the format is detected from each file's content (``--format`` forces one);
- bad input follows one policy: by default a bad record is skipped, counted by reason and written
  to a quarantine file (``read == accepted + rejected`` always); with ``strict=True`` the first bad
  record raises :class:`InputError` naming the file, line and problem.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import logging
import os
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson
import pyarrow as pa

from ntulm.errors import InputError
from ntulm.posts.formats import (
    FORMATS,
    IRA_COLUMNS,
    RecordError,
    iter_twitter_v2,
    parse_jsonl,
    parse_twitter_v1,
)
from ntulm.posts.schema import POSTS_SCHEMA, Post, posts_to_columns

log = logging.getLogger(__name__)

ENGINES = ("fast", "python")
GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 1 << 16
_MAX_RAW_IN_QUARANTINE = 4000
csv.field_size_limit(1 << 26)


@dataclass
class ReadReport:
    """Counts of one read. ``read`` counts records (lines, array items, CSV rows)."""

    read: int = 0
    accepted: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    files: dict[str, str] = field(default_factory=dict)  # path -> detected format
    files_skipped: dict[str, str] = field(default_factory=dict)  # path -> why
    labelled: Counter = field(default_factory=Counter)  # side table -> posts it labelled

    def merge(self, other: ReadReport) -> None:
        self.labelled.update(other.labelled)
        self.read += other.read
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.reasons.update(other.reasons)
        self.files.update(other.files)
        self.files_skipped.update(other.files_skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_by_reason": dict(self.reasons.most_common()),
            "files": self.files,
            "files_skipped": self.files_skipped,
            **({"labelled_from": dict(self.labelled)} if self.labelled else {}),
        }


class Quarantine:
    """Rejected records as JSON Lines: ``{"file", "line", "problem", "raw"}``; written atomically
    (to a temporary file renamed on close)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._fh: IO[str] | None = None
        self._tmp: Path | None = None

    def write(self, file: str, line: int | None, problem: str, raw: Any) -> None:
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = self.path.with_name(f".{self.path.name}.tmp")
            self._fh = open(self._tmp, "w", encoding="utf-8")
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="backslashreplace")
        elif not isinstance(raw, str):
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        rec = {"file": file, "line": line, "problem": problem, "raw": raw[:_MAX_RAW_IN_QUARANTINE]}
        self._fh.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._fh is not None and self._tmp is not None and self.path is not None:
            self._fh.close()
            os.replace(self._tmp, self.path)
            self._fh = None


@dataclass
class PostReader:
    """Reads posts from files and directories under one bad-input policy.

    Iterate over :meth:`iter_posts`; afterwards ``report`` holds the counts.
    """

    format: str = "auto"
    strict: bool = False
    max_text_chars: int = 10_000
    quarantine_path: str | Path | None = None
    engine: str = "fast"
    report: ReadReport = field(default_factory=ReadReport)
    # tabular input (posts/tabular.py): a column mapping, and labels joined from side tables
    columns: Any = None
    labels: tuple = ()

    def __post_init__(self) -> None:
        from ntulm.posts.tabular import LayoutError, parse_columns, side_labels

        try:
            self.layout = parse_columns(self.columns)
        except LayoutError as exc:
            raise InputError("--columns", None, str(exc)) from None
        if self.format == "table" and self.layout is None:
            raise InputError("--format", None, "format table needs a column mapping (--columns)")
        self._side = side_labels(self.labels)
        if self.engine not in ENGINES:
            raise InputError("reader", None, f"unknown reader {self.engine!r}; use fast or python")
        if self.format != "auto" and self.format not in FORMATS:
            raise InputError(
                "--format",
                None,
                f"unknown format {self.format!r}; use auto or one of {', '.join(FORMATS)}",
            )

    # -- the policy -------------------------------------------------------------------------
    def _reject(self, q: Quarantine, path: str, line: int | None, problem: str, raw: Any) -> None:
        self.report.read += 1
        self.report.rejected += 1
        self.report.reasons[problem.split(":")[0]] += 1
        if self.strict:
            raise InputError(path, line, problem)
        q.write(path, line, problem, raw)

    def _skip_file(self, path: str, why: str) -> None:
        if self.strict:
            raise InputError(path, None, why)
        log.warning("%s: skipped: %s", path, why)
        self.report.files_skipped[path] = why

    def _check(self, post: Post) -> str | None:
        if not post.text.strip():
            return "empty text"
        if len(post.text) > self.max_text_chars:
            return (
                f"text too long: {len(post.text)} characters > max_text_chars={self.max_text_chars}"
            )
        return None

    # -- entry point ------------------------------------------------------------------------
    def iter_posts(self, paths: Iterable[str | Path]) -> Iterator[tuple[Post, str]]:
        """Yield ``(post, "file:line")`` for every accepted post of every file under ``paths``."""
        files = list(expand_paths(paths))  # fail on a missing path before reading anything
        q = Quarantine(self.quarantine_path)
        try:
            for path in files:
                for post, src in self._iter_file(path, q):
                    for side in self._side:
                        self.report.labelled[side.path] += side.apply_post(post)
                    yield post, src
        finally:
            q.close()

    def _detect(self, path: Path) -> tuple[str, str | None] | None:
        """``(format, layout)`` of a file, or ``None`` when it is skipped (counted as such)."""
        name = str(path)
        try:
            if self.format == "auto" and (table := self._sniff_table(path)) is not None:
                fmt, layout = table
            else:
                fmt, layout = (self.format, None) if self.format != "auto" else sniff_format(path)
        except InputError as exc:
            self._skip_file(name, exc.problem)
            return None
        except OSError as exc:
            self._skip_file(name, f"cannot read: {exc}")
            return None
        if fmt is None:
            self._skip_file(name, layout or "unknown format")
            return None
        self.report.files[name] = fmt
        log.info("%s: reading as %s", name, fmt)
        return fmt, layout

    def _sniff_table(self, path: Path) -> tuple[str | None, str | None] | None:
        """``("table", None)`` for a Parquet file or, given a column mapping, a CSV/TSV whose
        header has the mapped columns; ``None`` to let :func:`sniff_format` decide."""
        from ntulm.posts.tabular import IRA, header_of, is_parquet

        if is_parquet(path):
            if self.layout is not None:
                return "table", None
            if all(c in header_of(path) for c in IRA.needed):
                return "ira_csv", None  # the IRA columns, as Parquet
            return None, "Parquet file: give its column mapping (--columns text=...,author=...)"
        if self.layout is None:
            return None
        try:
            header = header_of(path)
        except (UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile, zlib.error):
            return None
        if all(c in header for c in self.layout.needed):
            return "table", None
        return None

    def _iter_file(self, path: Path, q: Quarantine) -> Iterator[tuple[Post, str]]:
        detected = self._detect(path)
        if detected is not None:
            yield from self._iter_detected(path, *detected, q)

    def _iter_detected(
        self, path: Path, fmt: str, layout: str | None, q: Quarantine
    ) -> Iterator[tuple[Post, str]]:
        name = str(path)
        try:
            for post, line, raw in self._records(path, fmt, layout, q):
                problem = self._check(post)
                if problem:
                    self._reject(q, name, line, problem, raw)
                    continue
                self.report.read += 1
                self.report.accepted += 1
                yield post, f"{name}:{line}"
        except InputError as exc:
            if self.strict:
                raise
            self._skip_file(name, exc.problem)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            self._reject(q, name, None, f"truncated or corrupt gzip: {exc}", "")
        except OSError as exc:
            self._reject(q, name, None, f"read error: {exc}", "")

    # -- tables (the fast path) -------------------------------------------------------------
    def iter_tables(
        self, paths: Iterable[str | Path], batch_size: int = 50_000, threads: int | None = None
    ) -> Iterator[pa.Table]:
        """The accepted posts of every file under ``paths`` as :data:`POSTS_SCHEMA` tables (at
        most ``batch_size`` rows each), in the order :meth:`iter_posts` yields them, with the same
        counts and quarantine. With ``engine="fast"`` the formats that have a fast reader skip
        the per-record Python parsing (see ``docs/posts.md``)."""
        for table in self._iter_tables(paths, batch_size, threads):
            for side in self._side:
                table, matched = side.apply_table(table)
                self.report.labelled[side.path] += matched
            yield table

    def _iter_tables(
        self, paths: Iterable[str | Path], batch_size: int, threads: int | None
    ) -> Iterator[pa.Table]:
        files = list(expand_paths(paths))
        q = Quarantine(self.quarantine_path)
        try:
            for path in files:
                detected = self._detect(path)
                if detected is None:
                    continue
                fast = self._fast_tables(path, *detected, q, threads)
                if fast is not None:
                    for table in fast:
                        for start in range(0, table.num_rows, batch_size):
                            yield table.slice(start, batch_size)
                    continue
                posts: list[Post] = []
                sources: list[str] = []
                for post, src in self._iter_detected(path, *detected, q):
                    # (side labels: applied to the table by iter_tables)
                    posts.append(post)
                    sources.append(src)
                    if len(posts) >= batch_size:
                        yield _to_table(posts, sources)
                if posts:
                    yield _to_table(posts, sources)
        finally:
            q.close()

    def _fast_tables(
        self, path: Path, fmt: str, layout: str | None, q: Quarantine, threads: int | None
    ) -> Iterable[pa.Table] | None:
        """The file's tables from a fast reader, or ``None`` to read it with the reference."""
        if self.engine != "fast":
            return None
        if fmt == "twitter_v1":
            return self._fast_v1(path, layout, q, threads)
        from ntulm.posts.tabular import IRA, is_parquet

        if fmt != "ira_csv" and not (fmt == "table" and self.layout is IRA):
            return None
        if is_parquet(path):
            return None
        from ntulm.posts.fast_ira import NotPlain, ira_tables

        try:
            return list(ira_tables(self, path, q, threads=threads))
        except NotPlain:
            return None
        except InputError:
            if self.strict:
                raise
            self._skip_file(str(path), sys.exc_info()[1].problem)  # type: ignore[union-attr]
            return []
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
            return None  # the reference reader keeps the posts before the damage and reports it

    def _fast_v1(
        self, path: Path, layout: str | None, q: Quarantine, threads: int | None
    ) -> Iterable[pa.Table] | None:
        from ntulm.posts.fast_v1 import CHUNK_BYTES, v1_tables

        try:
            if (layout or _sniff_layout(path)) != "lines":
                return None  # arrays and documents: the reference reader
            with open(path, "rb") as fh:
                gz = fh.read(2) == GZIP_MAGIC
            data = None
            if gz:  # read it whole first: damage is then the reference's to report, as today
                with open_binary(path) as fh:
                    data = fh.read()
        except (InputError, EOFError, gzip.BadGzipFile, zlib.error, OSError):
            return None
        # Worker processes pay off from a few chunks on (their start costs about a second).
        big = (len(data) if data is not None else path.stat().st_size) >= 4 * CHUNK_BYTES
        workers = (threads or os.cpu_count() or 1) if big else 1
        return v1_tables(self, path, q, data, workers=workers)

    def _records(
        self, path: Path, fmt: str, layout: str | None, q: Quarantine
    ) -> Iterator[tuple[Post, int, Any]]:
        name = str(path)
        if fmt in ("ira_csv", "table"):
            from ntulm.posts.tabular import IRA, table_records

            yield from table_records(self, path, q, IRA if fmt == "ira_csv" else self.layout)
            return
        parse = {
            "jsonl": _one(parse_jsonl),
            "twitter_v1": _one(parse_twitter_v1),
            "twitter_v2": iter_twitter_v2,
        }[fmt]
        layout = layout or _sniff_layout(path)
        if layout == "array":
            items: Iterator[tuple[int, Any, Any]] = _array_items(path)
        elif layout == "document":
            items = _document(path)
        else:
            items = _json_lines(path)
        for line, obj, raw in items:
            if isinstance(obj, _Bad):
                self._reject(q, name, line, obj.problem, raw)
                continue
            try:
                posts = list(parse(obj))
            except RecordError as exc:
                self._reject(q, name, line, str(exc), raw)
                continue
            for post in posts:
                yield post, line, raw


class _Bad:
    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem


def _one(fn):  # adapt a one-post parser to the many-posts shape of the v2 parser
    def many(obj: Any) -> Iterator[Post]:
        yield fn(obj)

    return many


def expand_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files in the order given; directories walked recursively in sorted order (hidden files
    and folders skipped)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if not f.startswith("."):
                        yield Path(root) / f
        elif p.exists():
            yield p
        else:
            raise InputError(str(p), None, "no such file or directory")


def open_binary(path: Path) -> IO[bytes]:
    fh = open(path, "rb")
    magic = fh.read(2)
    fh.seek(0)
    if magic == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def open_text(path: Path) -> IO[str]:
    """Text with undecodable bytes kept as surrogates (so a bad line is reported, not fatal)."""
    return io.TextIOWrapper(
        open_binary(path), encoding="utf-8-sig", errors="surrogateescape", newline=""
    )


def _head(path: Path) -> bytes:
    chunks: list[bytes] = []
    size = 0
    with open_binary(path) as fh:
        try:
            while size < _SNIFF_BYTES and (chunk := fh.read(4096)):
                chunks.append(chunk)
                size += len(chunk)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            if not chunks:  # a truncated file still has a readable head; its tail is reported later
                raise InputError(str(path), None, f"truncated or corrupt gzip: {exc}") from None
    return b"".join(chunks)


def _classify(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "data" in obj or "author_id" in obj:
        return "twitter_v2"
    if "user" in obj or "id_str" in obj or "entities" in obj or "full_text" in obj:
        return "twitter_v1"
    if "text" in obj and ("author" in obj or "id" in obj):
        return "jsonl"
    return None


def sniff_format(path: Path) -> tuple[str | None, str | None]:
    """``(format, layout)`` from content. layout: ``lines``, ``array`` or ``document``; on failure
    ``(None, why)``."""
    head = _head(path)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        return None, "empty file"
    if text[0] == "[":
        for _, obj, _ in _array_items(path):
            if isinstance(obj, _Bad):
                return None, f"JSON array whose first item is unreadable: {obj.problem}"
            fmt = _classify(obj)
            return (fmt, "array") if fmt else (None, "JSON array of unrecognised objects")
        return None, "empty JSON array"
    if text[0] == "{":
        first = text.split("\n", 1)[0]
        try:
            fmt = _classify(json.loads(first))
            return (fmt, "lines") if fmt else (None, "JSON objects of unrecognised shape")
        except json.JSONDecodeError:
            for _, obj, _ in _document(path):
                if isinstance(obj, _Bad):
                    return None, f"not JSON Lines and not one JSON document: {obj.problem}"
                fmt = _classify(obj)
                return (fmt, "document") if fmt else (None, "JSON document of unrecognised shape")
    header = next(csv.reader([text.split("\n", 1)[0]]), [])
    if all(c in header for c in IRA_COLUMNS):
        return "ira_csv", None
    return None, "unknown format (not JSON Lines, a JSON array or document, or the IRA CSV layout)"


def _sniff_layout(path: Path) -> str:
    text = _head(path).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return "array"
    first = text.split("\n", 1)[0]
    if first.startswith("{"):
        try:
            json.loads(first)
        except json.JSONDecodeError:
            return "document"
    return "lines"


def _json_lines(path: Path) -> Iterator[tuple[int, Any, Any]]:
    with open_binary(path) as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[3:]
            if not raw.strip():
                continue
            yield (lineno, *json_line(raw.rstrip(b"\r\n")))


# A \uD800-\uDFFF escape: a lone one decodes to a string that is not Unicode text.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def json_line(raw: bytes) -> tuple[Any, Any]:
    """One JSON Lines record (without its line break) -> ``(object or _Bad, raw for quarantine)``."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Bad(f"invalid UTF-8 at byte {exc.start}"), raw
    try:
        obj = json.loads(s)
    except json.JSONDecodeError as exc:
        return _Bad(f"malformed JSON: {exc.msg} at column {exc.colno}"), s
    except RecursionError:
        return _Bad("malformed JSON: nested too deeply"), s
    if _SURROGATE_ESCAPE.search(s) and _has_lone_surrogate(obj):
        return _Bad("malformed JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"), s
    return obj, s


def _has_lone_surrogate(obj: Any) -> bool:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            if _LONE.search(o):
                return True
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return False


_LONE = re.compile("[\ud800-\udfff]")


def _array_items(path: Path) -> Iterator[tuple[int, Any, Any]]:
    """Items of a top-level JSON array, streamed; ``line`` is the item's 1-based index."""
    with open_binary(path) as fh:
        i = 0
        try:
            for i, obj in enumerate(ijson.items(fh, "item", use_float=True), 1):
                yield i, obj, obj
        except ijson.JSONError as exc:
            yield i + 1, _Bad(f"malformed JSON array after item {i}: {exc}"), ""
        except UnicodeDecodeError as exc:
            yield i + 1, _Bad(f"invalid UTF-8 after item {i}: {exc.reason}"), ""


def _document(path: Path) -> Iterator[tuple[int, Any, Any]]:
    """One pretty-printed JSON document (e.g. a v2 response page)."""
    with open_binary(path) as fh:
        data = fh.read()
    try:
        yield 1, json.loads(data.decode("utf-8-sig")), ""
    except RecursionError:
        yield 1, _Bad("malformed JSON: nested too deeply"), ""
    except UnicodeDecodeError as exc:
        yield 1, _Bad(f"invalid UTF-8 at byte {exc.start}"), ""
    except json.JSONDecodeError as exc:
        yield (
            exc.lineno,
            _Bad(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"),
            "",
        )


def _to_table(posts: list[Post], sources: list[str]) -> pa.Table:
    table = pa.Table.from_pydict(posts_to_columns(posts, sources), schema=POSTS_SCHEMA)
    posts.clear()
    sources.clear()
    return table
