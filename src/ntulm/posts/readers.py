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
import errno
import gzip
import io
import itertools
import json
import logging
import os
import re
import stat
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson
import pyarrow as pa

from ntulm.artifacts import AtomicFile
from ntulm.errors import ConfigError, InputError
from ntulm.posts.config import DUPLICATES, ENGINES
from ntulm.posts.formats import IRA_COLUMNS, REGISTRY, RecordError
from ntulm.posts.schema import POSTS_SCHEMA, Post, invalid_field, posts_to_columns

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 1 << 26  # at most this much of a file is read to detect its format
_SNIFF_LINES = 10  # non-blank lines (or array items) looked at to detect it
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
    duplicate_ids: int = 0  # posts whose id an earlier post has (see PostReader.duplicates)

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
            "duplicate_ids": self.duplicate_ids,
        }


def no_posts_error(
    report: ReadReport, paths: Iterable[str | Path] | None = None, what: str = "no post accepted"
) -> InputError:
    """The error of a read that accepted no post (``paths``: the inputs given): what was read,
    rejected and skipped, and why (a run on nothing must not look like a run on an empty
    corpus). ``what`` replaces the first words, e.g. for a read that kept too few posts."""
    parts = [f"{what} ({report.read:,} record(s) read, {report.rejected:,} rejected)"]
    if report.reasons:
        top = report.reasons.most_common(3)
        parts.append("rejected for: " + "; ".join(f"{why} ({n:,})" for why, n in top))
    skipped = list(report.files_skipped.items())
    parts += [f"skipped {path}: {why}" for path, why in skipped[:20]]
    if len(skipped) > 20:
        parts.append(f"... and {len(skipped) - 20} more skipped file(s)")
    if not report.files and not skipped:
        parts.append("no input file found")
    if any(why.startswith(("unknown format", "JSON")) for _, why in skipped):
        parts.append(
            f"the formats read are {', '.join(REGISTRY)} (docs/posts.md); convert other data "
            "(e.g. a CSV export) to the JSON Lines schema there: one object per line with "
            "id, text and author"
        )
    given = [str(p) for p in paths or []]
    where = "--posts" + (" " + " ".join(given[:5]) if given else "")
    where += f" (and {len(given) - 5} more)" if len(given) > 5 else ""
    return InputError(where, None, "\n  ".join(parts))


def require_posts(
    stream: Iterable[tuple[Post, str]], reader: PostReader, paths: Iterable[str | Path]
) -> Iterator[tuple[Post, str]]:
    """``stream`` (e.g. ``reader.iter_posts(paths)``) with its first post read ahead, now: a
    stream without any post raises :func:`no_posts_error` before the caller writes anything."""
    stream = iter(stream)
    first = next(stream, None)
    if first is None:
        raise no_posts_error(reader.report, paths)
    return itertools.chain([first], stream)


class Quarantine:
    """Rejected records as JSON Lines: ``{"file", "line", "problem", "raw"}``; written atomically
    (to a temporary file of this reader's own, renamed on close)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._out: AtomicFile | None = None

    def write(self, file: str, line: int | None, problem: str, raw: Any) -> None:
        if self.path is None:
            return
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # e.g. finetune's --out
            self._out = AtomicFile(self.path)  # a temp name of this reader's own
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="backslashreplace")
        elif not isinstance(raw, str):
            try:
                raw = json.dumps(raw, ensure_ascii=False, default=str)
            except (ValueError, RecursionError):  # nesting too deep, a huge integer
                raw = repr(raw)[:_MAX_RAW_IN_QUARANTINE]
        rec = {"file": file, "line": line, "problem": problem, "raw": raw[:_MAX_RAW_IN_QUARANTINE]}
        out = json.dumps(rec, ensure_ascii=False)
        if _LONE.search(out):  # a lone surrogate is not UTF-8: keep it as its JSON escape
            out = json.dumps(rec)
        self._out.fh.write(out + "\n")

    def close(self) -> None:
        if self._out is not None:
            self._out.commit()
            self._out = None


_POSTS_PER_SLICE = 8192  # rows of a fast reader's table turned into Post objects at once
# iter_posts streams: a fast reader parses (and for gzip, decompresses) a whole file in memory, so
# files bigger than this on disk stream through the reference parser in constant memory instead
_FAST_POSTS_MAX_BYTES = 256 << 20
# iter_posts(limit=N) with N below this streams through the reference parser: up to 50,000 posts
# parsed one by one (about 35 us each, 1.75 s) cost about what a fast reader's parse of a whole
# IRA file of 250,000 rows does before its first post (1.5 s), and less for bigger files
_STREAM_BELOW = 50_000


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
    # Posts repeating an earlier post's id (in input order): keep the first (the others are
    # rejections), fail (error), or keep all (counted only). The posts table applies it across
    # files read in parallel (posts/table.py), iter_posts as it streams.
    duplicates: str = "first"
    # file -> prefix of its default post ids ``<prefix>:<line>`` (tabular files without an id
    # column); set for every file read (:func:`id_prefixes`), or given by the caller
    id_prefixes: dict[str, str] = field(default_factory=dict)

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
        if self.duplicates not in DUPLICATES:
            raise InputError(
                "duplicates",
                None,
                f"unknown policy {self.duplicates!r}; use {' or '.join(DUPLICATES)}",
            )
        if self.format != "auto" and self.format not in REGISTRY:
            raise InputError(
                "--format",
                None,
                f"unknown format {self.format!r}; use auto or one of {', '.join(REGISTRY)}",
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
        problem = invalid_field(post)
        if problem:
            return problem
        if not post.text.strip():
            return "empty text"
        if len(post.text) > self.max_text_chars:
            return (
                f"text too long: {len(post.text)} characters > max_text_chars={self.max_text_chars}"
            )
        return None

    def id_prefix(self, path: Path) -> str:
        """The prefix of ``path``'s default post ids ``<prefix>:<line>``."""
        return self.id_prefixes.get(str(path)) or path.name.split(".")[0]

    def files(self, paths: Iterable[str | Path]) -> list[Path]:
        """The files under ``paths`` (:func:`input_files`; a missing path fails at once), each
        given its id prefix (:func:`id_prefixes`) unless the caller gave one."""
        found = list(input_files(paths, self._skip_file))
        for name, prefix in id_prefixes(found).items():
            self.id_prefixes.setdefault(name, prefix)
        return [f for f, _ in found]

    # -- entry point ------------------------------------------------------------------------
    def iter_posts(
        self, paths: Iterable[str | Path], *, limit: int = 0
    ) -> Iterator[tuple[Post, str]]:
        """Yield ``(post, "file:line")`` for every accepted post of every file under ``paths``,
        under the ``duplicates`` policy (the ids seen are held in memory). ``limit``: stop after
        that many posts (0: all); below :data:`_STREAM_BELOW` files are read by the reference
        parser, which streams, so the first posts of a big file come without parsing it whole."""
        if limit < 0:
            raise ConfigError(f"limit: {limit} is negative (0 reads every post)")
        files = self.files(paths)
        q = Quarantine(self.quarantine_path)
        seen: set[str] = set()
        stream = 0 < limit < _STREAM_BELOW
        n = 0
        try:
            for path in files:
                for post, src in self._file_posts(path, q, stream):
                    if post.id in seen and not self._duplicate(q, post, src):
                        continue
                    seen.add(post.id)
                    for side in self._side:
                        self.report.labelled[side.path] += side.apply_post(post)
                    yield post, src
                    n += 1
                    if n == limit:
                        return
        finally:
            q.close()

    def _duplicate(self, q: Quarantine, post: Post, src: str) -> bool:
        """Count a post whose id an earlier post has; whether to keep it (``keep-all``)."""
        self.report.duplicate_ids += 1
        file, _, at = src.rpartition(":")
        line = int(at) if at.isdigit() else None
        if self.duplicates == "error":
            raise InputError(file, line, f"duplicate post id {post.id!r}")
        if self.duplicates == "keep-all":
            return True
        self.report.accepted -= 1  # accepted when read: now a rejection, as in the posts table
        self.report.rejected += 1
        self.report.reasons["duplicate post id"] += 1
        q.write(file, line, "duplicate post id (an earlier post has it)", post.id)
        return False

    def _detect(self, path: Path) -> tuple[str, str | None] | None:
        """``(format, layout)`` of a file, or ``None`` when it is skipped (counted as such)."""
        name = str(path)
        problem = file_problem(path)
        if problem:
            self._skip_file(name, problem)
            return None
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

    def _file_posts(
        self, path: Path, q: Quarantine, stream: bool = False
    ) -> Iterator[tuple[Post, str]]:
        """The accepted ``(post, "file:line")`` of one file: from its fast reader's tables where
        it has one (``engine="fast"``; the same posts, counts and quarantine as the reference,
        without the per-record Python parsing) and the file is at most
        :data:`_FAST_POSTS_MAX_BYTES` on disk, else (or with ``stream``) from the reference
        parser, which streams."""
        from ntulm.posts.rows import rows_to_posts

        detected = self._detect(path)
        if detected is None:
            return
        small = path.stat().st_size <= _FAST_POSTS_MAX_BYTES
        fast = self._fast_tables(path, *detected, q, None) if small and not stream else None
        if fast is None:
            yield from self._iter_detected(path, *detected, q)
            return
        for table in fast:
            for start in range(0, table.num_rows, _POSTS_PER_SLICE):
                part = table.slice(start, _POSTS_PER_SLICE)  # Post objects a slice at a time
                yield from zip(rows_to_posts(part), part.column("source").to_pylist(), strict=True)

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
        files = self.files(paths)
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
                from ntulm.posts.fast_ira import gunzip

                data = gunzip(path.read_bytes())
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
        spec = REGISTRY[fmt]
        if spec.parse is None:  # rows of a table, through a column mapping
            from ntulm.posts.tabular import PRESETS, table_records

            layout_ = PRESETS[spec.preset] if spec.preset else self.layout
            yield from table_records(self, path, q, layout_)
            return
        parse = spec.parse
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
            except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
                # A parser bug on a shape nobody foresaw: still one rejected record, not a crash.
                log.warning("%s:%s: %s parsing the record: %s", name, line, type(exc).__name__, exc)
                self._reject(q, name, line, f"unreadable record ({type(exc).__name__})", raw)
                continue
            for post, part in posts:  # part: the tweet of a v2 page the post comes from
                own = raw if part is None else json.dumps(part) if isinstance(part, str) else part
                if isinstance(post, RecordError):
                    self._reject(q, name, line, str(post), own)
                else:
                    yield post, line, own


class _Bad:
    __slots__ = ("problem",)

    def __init__(self, problem: str):
        self.problem = problem


def expand_paths(
    paths: Iterable[str | Path], on_skip: Callable[[str, str], None] | None = None
) -> Iterator[Path]:
    """Files in the order given; directories walked recursively in sorted order (hidden files
    and folders skipped), following links to directories. A directory that cannot be listed or
    a link back to a directory being walked (a symlink loop) is passed to ``on_skip`` with the
    reason. Entries that are not readable regular files are yielded all the same: the reader
    skips them with the reason (:func:`file_problem`). A missing path given by name is an
    :class:`InputError`."""
    return (f for f, _ in input_files(paths, on_skip))


def input_files(
    paths: Iterable[str | Path], on_skip: Callable[[str, str], None] | None = None
) -> Iterator[tuple[Path, Path | None]]:
    """:func:`expand_paths` with the directory each file was found under (``None`` for a file
    given by name)."""
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for f in _walk(p, on_skip or (lambda path, why: None)):
                yield f, p
        elif p.exists() or p.is_symlink():  # a dangling link or a loop: skipped by the reader
            yield p, None
        else:
            raise InputError(str(p), None, "no such file or directory")


def id_prefixes(files: Iterable[tuple[Path, Path | None]]) -> dict[str, str]:
    """File -> the prefix of its default post ids ``<prefix>:<line>`` (the ids of tabular files
    without an id column, such as the IRA CSV). The prefix is the file's name without extensions,
    as in earlier versions; where that would give two different input files the same ids (the same
    name in two directories, ``x.csv`` beside ``x.csv.gz``), each of those files takes the first
    of these that tells them apart: its path below the directory given in ``--posts`` without
    extensions (``a/x``), the same with them (``a/x.csv``), the path as given. A file given twice
    is one file: its posts repeat their ids (and are duplicates)."""
    names = {str(f): (f, root) for f, root in files}
    options = {}
    for name, (f, root) in names.items():
        rel = Path(os.path.relpath(f, root)).as_posix() if root is not None else f.name
        head, _, base = rel.rpartition("/")
        bare = f"{head}/{base.split('.')[0]}" if head else base.split(".")[0]
        options[name] = (f.name.split(".")[0], bare, rel, name)
    level = dict.fromkeys(names, 0)
    for _ in range(len(next(iter(options.values()), ()))):
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(options[name][level[name]], []).append(name)
        clash = [n for group in groups.values() if len(group) > 1 for n in group]
        if not clash:
            break
        for n in clash:
            level[n] = min(level[n] + 1, 3)
    return {name: options[name][level[name]] for name in names}


def _walk(top: Path, on_skip: Callable[[str, str], None]) -> Iterator[Path]:
    seen = {os.path.realpath(top): str(top)}  # real path -> the path it is read as

    def unlistable(exc: OSError) -> None:
        on_skip(str(exc.filename), f"directory cannot be listed: {exc.strerror}")

    for root, dirs, files in os.walk(top, onerror=unlistable, followlinks=True):
        keep = []
        here = os.path.realpath(root)
        for d in sorted(d for d in dirs if not d.startswith(".")):
            path = os.path.join(root, d)
            real = os.path.realpath(path)
            if real == here or here.startswith(real + os.sep):
                on_skip(path, f"symlink loop (a link to {real}, a directory above it)")
            elif real in seen:
                on_skip(path, f"the same directory as {seen[real]} (read once)")
            else:
                seen[real] = path
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if not f.startswith("."):
                yield Path(root) / f


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not read (never opening it: a FIFO would block), or ``None``."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if path.is_symlink():
            return f"dangling symlink (to {os.readlink(path)})"
        return f"cannot read: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "socket"
            if stat.S_ISSOCK(st.st_mode)
            else "device"
        )
        return f"not a regular file ({kind})"
    if not os.access(path, os.R_OK):
        return "cannot read: permission denied"
    return None


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


def _head_lines(path: Path, n: int = _SNIFF_LINES) -> list[bytes]:
    """The first ``n`` non-blank lines (without line breaks or BOM) within the first
    :data:`_SNIFF_BYTES` of the (decompressed) file; a line cut by that bound is left out."""
    lines: list[bytes] = []
    used = 0
    with open_binary(path) as fh:
        try:
            while len(lines) < n and used < _SNIFF_BYTES:
                raw = fh.readline(_SNIFF_BYTES - used)
                if not raw:
                    break
                if used == 0 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[3:]
                used += len(raw)
                if not raw.endswith(b"\n") and used >= _SNIFF_BYTES:
                    break
                if raw.strip():
                    lines.append(raw.rstrip(b"\r\n"))
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            if not lines:  # a truncated file still has a readable head; its tail is reported later
                raise InputError(str(path), None, f"truncated or corrupt gzip: {exc}") from None
    return lines


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


def _json_layout(path: Path, first: bytes) -> tuple[str, Any]:
    """``("lines", None)`` or ``("document", parsed document or _Bad)`` for a file whose first
    line starts with ``{``. A first line that is not JSON makes it a document if the whole (small)
    file parses as one; otherwise the file is JSON Lines with a bad first line (rejected alone)."""
    if not isinstance(json_line(first)[0], _Bad):
        return "lines", None
    if path.stat().st_size <= _SNIFF_BYTES:  # a document is read whole: bounded
        try:
            for _, obj, _ in _document(path):
                if not isinstance(obj, _Bad):
                    return "document", obj
        except (EOFError, gzip.BadGzipFile, zlib.error):
            pass  # damaged: read as lines, which keeps what comes before the damage
    return "lines", None


def sniff_format(path: Path) -> tuple[str | None, str | None]:
    """``(format, layout)`` from content. layout: ``lines``, ``array`` or ``document``; on failure
    ``(None, why)``. JSON Lines are recognised by the first of their first :data:`_SNIFF_LINES`
    lines that is a known record, so bad or long leading lines do not lose the file."""
    lines = _head_lines(path)
    if not lines:
        return None, "empty file"
    text = lines[0].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    why = UNKNOWN_FORMAT
    if text[:1] == "[":
        why = "empty JSON array"
        for item, obj, _ in _array_items(path):
            if isinstance(obj, _Bad):
                why = f"JSON array whose item {item} is unreadable: {obj.problem}"
                break
            if fmt := _classify(obj):
                return fmt, "array"
            why = "JSON array of unrecognised objects"
            if item >= _SNIFF_LINES:
                break
        # not an array of posts: maybe JSON Lines whose first line is bad (looked at below)
    elif text[:1] == "{":
        layout, doc = _json_layout(path, lines[0])
        if layout == "document":
            fmt = _classify(doc)
            return (fmt, "document") if fmt else (None, "JSON document of unrecognised shape")
    else:
        try:
            header = next(csv.reader([text]), [])
        except csv.Error:  # e.g. a NUL byte: not a CSV file
            header = []
        if all(c in header for c in IRA_COLUMNS):
            return "ira_csv", None
    problems = []
    for raw in lines:  # JSON Lines: the first known record decides
        obj = json_line(raw)[0]
        if isinstance(obj, _Bad):
            problems.append(obj.problem)
        elif fmt := _classify(obj):
            return fmt, "lines"
        else:
            problems.append("JSON objects of unrecognised shape")
    if text[:1] != "{":
        return None, why
    why = "JSON objects of unrecognised shape"
    if why not in problems:
        why = f"not JSON Lines and not one JSON document: {problems[0]}"
    return None, why


UNKNOWN_FORMAT = "unknown format (not JSON Lines, a JSON array or document, or the IRA CSV layout)"


def _sniff_layout(path: Path) -> str:
    lines = _head_lines(path, 1)
    text = lines[0].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n") if lines else ""
    if text.startswith("["):
        return "array"
    if text.startswith("{"):
        return _json_layout(path, lines[0])[0]
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
        return _Bad(f"malformed JSON: {_msg(exc)} at column {exc.colno}"), s
    except RecursionError:
        return _Bad("malformed JSON: nested too deeply"), s
    except ValueError as exc:  # an integer of more than 4300 digits (sys.int_info)
        return _Bad(f"malformed JSON: {exc}".split(";")[0]), s
    if _SURROGATE_ESCAPE.search(s) and _has_lone_surrogate(obj):
        return _Bad("malformed JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)"), s
    return obj, s


def _msg(exc: json.JSONDecodeError) -> str:
    # "Unterminated string starting at" ends in "at": no "starting at at column 5"
    return exc.msg.removesuffix(" at")


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
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield 1, _Bad(f"invalid UTF-8 at byte {exc.start}"), data
        return
    try:
        yield 1, json.loads(text), text
    except RecursionError:
        yield 1, _Bad("malformed JSON: nested too deeply"), text
    except json.JSONDecodeError as exc:
        yield (
            exc.lineno,
            _Bad(f"malformed JSON: {_msg(exc)} at line {exc.lineno} column {exc.colno}"),
            text,
        )
    except ValueError as exc:  # an integer of more than 4300 digits
        yield 1, _Bad(f"malformed JSON: {exc}".split(";")[0]), text


def _to_table(posts: list[Post], sources: list[str]) -> pa.Table:
    table = pa.Table.from_pydict(posts_to_columns(posts, sources), schema=POSTS_SCHEMA)
    posts.clear()
    sources.clear()
    return table
