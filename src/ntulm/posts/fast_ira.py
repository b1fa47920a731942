"""Fast reader for the IRA CSV layout: whole files through pyarrow's CSV reader and DuckDB SQL, the
Python reference (:func:`~ntulm.posts.formats.parse_ira_row`, the tabular reader's rules under its
built-in IRA mapping) only for the rows it cannot decide.

Identical to the reference by construction:
- tokenizing: pyarrow parses the file, and the parse is accepted only if writing the fields back as
  minimal-quoted CSV gives the file's bytes exactly (then Python's ``csv`` module, the reference
  tokenizer, reads the same fields). Otherwise (odd quoting, blank lines, short rows, invalid UTF-8)
  the file is tokenized by ``csv`` row by row, as the reference does;
- post ids ``<stem>:<line>``: the line a record starts on, counted as ``csv`` counts it (``\\r\\n``,
  ``\\r`` and ``\\n`` each end a line, line breaks inside quoted fields included);
- extraction: the SQL mirrors the rules of :mod:`ntulm.posts.extract` on *plain* rows only, rows
  whose text holds nothing but printable ASCII, tab and line breaks and :data:`INERT` characters
  (emoji, symbols, punctuation that no rule can see), no ``&`` (HTML entities), no URL the SQL
  cannot split into a host, no URL ending in a bracket, and passing the empty/length checks. Every
  other row goes through the reference parser, and the two parts are merged in line order.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import regex

from ntulm.errors import InputError
from ntulm.posts.extract import MEDIA_HOSTS
from ntulm.posts.formats import IRA_COLUMNS, IRA_LABELS, RecordError, is_utf8, parse_ira_row
from ntulm.posts.schema import POSTS_SCHEMA, posts_to_columns
from ntulm.posts.tabular import _FALSE, _ISO_SPACE, _TRUE

if TYPE_CHECKING:
    from ntulm.posts.readers import PostReader, Quarantine

log = logging.getLogger(__name__)

_SURROGATE = regex.compile("[\udc80-\udcff]")
# Non-ASCII characters that match none of the reference rules' classes (word, letter, mark,
# number, space, '…', fullwidth '#'/'@', case-insensitive twins of URL letters): checked with the
# reference regex engine itself, over the blocks where emoji, symbols and punctuation live.
_NOT_INERT = regex.compile(r"(?i)[\p{L}\p{M}\p{N}_\w\s@＠#＃!$%&*.+\-<>\"…/:htpswic]")
_INERT_BLOCKS = (
    (0xA1, 0xC0), (0x2010, 0x2C00), (0x3000, 0x3040), (0xFFF0, 0xFFFE), (0x1F000, 0x1FB00)
)  # fmt: skip


@functools.cache
def inert_class() -> str:
    """RE2 character-class body listing the :data:`INERT` code points as explicit ranges."""
    ranges: list[list[int]] = []
    for lo, hi in _INERT_BLOCKS:
        for c in range(lo, hi):
            if _NOT_INERT.match(chr(c)) or chr(c).isspace():
                continue
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
    return "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)


# --- tokenizing ---------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b":
        data = gunzip(data)
    return data[3:] if data[:3] == b"\xef\xbb\xbf" else data


def gunzip(data: bytes) -> bytes:
    """``gzip.decompress`` through ISA-L (about 3x faster); any failure is left to ``gzip``, so
    damaged files raise exactly what the reference reader sees."""
    try:
        from isal import igzip

        return igzip.decompress(data)
    except Exception:  # noqa: BLE001 - gzip.decompress decides (and raises its own error)
        return gzip.decompress(data)


def _render(col: pa.Array) -> pa.Array:
    """Fields as Python's ``csv.writer`` (QUOTE_MINIMAL) writes them."""
    needs = pc.match_substring_regex(col, '[",\r\n]')
    if not pc.any(needs).as_py():
        return col
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(col, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, col)


def _arrow_rows(data: bytes, header: list[str], threads: bool) -> pa.Table | None:
    """The file's rows parsed by pyarrow, or ``None`` when that parse is not provably the one
    Python's ``csv`` makes."""
    if len(set(header)) != len(header):
        return None
    head_end = data.find(b"\n")
    term = b"\r\n" if head_end > 0 and data[head_end - 1 : head_end] == b"\r" else b"\n"
    hdr = ",".join(f'"{h.replace(chr(34), chr(34) * 2)}"' if any(c in h for c in '",\r\n') else h
                   for h in header).encode() + term  # fmt: skip
    if not data.startswith(hdr):
        return None
    if len(data) == len(hdr):
        return pa.table({h: pa.array([], pa.string()) for h in header})
    body = pa.py_buffer(data).slice(len(hdr))  # no copy
    try:
        table = pcsv.read_csv(
            body,
            read_options=pcsv.ReadOptions(
                column_names=header, use_threads=threads, block_size=1 << 24
            ),
            parse_options=pcsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(
                column_types={h: pa.string() for h in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    table = table.combine_chunks()
    rendered = [
        _render(table.column(h).chunk(0) if table.num_rows else table.column(h)) for h in header
    ]
    rows = pc.binary_join_element_wise(*rendered, ",")
    back = pc.binary_join_element_wise(rows, "", term.decode())
    width = np.int64 if pa.types.is_large_string(back.type) else np.int32
    offsets = np.frombuffer(back.buffers()[1], dtype=width)[
        back.offset : back.offset + len(back) + 1
    ]
    start, end = int(offsets[0]), int(offsets[-1])
    written = back.buffers()[2].slice(start, end - start)
    if data.endswith(term):
        same = written.equals(body)
    else:  # the last line has no line break: the parse wrote one
        same = end - start == body.size + len(term) and written.equals(
            pa.py_buffer(data[len(hdr) :] + term)
        )
    if not same:
        return None
    breaks = pc.count_substring_regex(rows, "\r\n|\r|\n")
    return table.append_column("_breaks", breaks)


def _python_rows(data: bytes, name: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows and their first lines, tokenized by ``csv`` exactly as the reference does."""
    text = io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return [], [], []
    rows, lines = [], []
    start = reader.line_num + 1
    for row in reader:
        rows.append(row)
        lines.append(start)
        start = reader.line_num + 1
    return header, rows, lines


# --- extraction ---------------------------------------------------------------------------------

# Beyond ASCII, plain text may hold U+00A0 (a space to the reference: it ends a URL) and U+2026
# ('…', which ends a URL too); neither is a word, hashtag, mention or e-mail character.
_URL = r"(?i)\b(?:https?://|www\.|pic\.twitter\.com/)[^\t\n\f\r <>\"\x{A0}\x{2026}]+"
_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
_HASHTAG = r"(?:^|[^A-Za-z0-9_&/])#([A-Za-z0-9_]+)"
_MENTION = r"(?:^|[^A-Za-z0-9_@!#$%&*])@([A-Za-z0-9_]+@?)"
# A URL whose host the SQL splits off as urllib does: scheme + host chars up to / ? # or the end.
_SIMPLE_URL = r"(?i:https?://)?[A-Za-z0-9._-]*(?:[/?#][^\s]*)?"
_TRAIL = r"[.,;:!?'\"*]+$"


# html.unescape for text whose every '&' starts &amp; &lt; &gt; or &quot;, or is bare: followed
# by a space, tab or line break or ending the text (checked). A bare '&' is left as it is (the
# reference's pattern cannot start a name at those characters), and one pass of the reference
# equals these replacements in this order, &amp; last. (Texts with a bare '&', "Clinton & Trump",
# were two thirds of the real IRA rows that went to the reference.)
_UNESCAPE = (
    "replace(replace(replace(replace({c}, '&lt;', '<'), '&gt;', '>'), '&quot;', '\"'), "
    "'&amp;', '&')"
)


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _dedupe(expr: str) -> str:
    """Distinct items of a list in order of first appearance."""
    return (
        f"CASE WHEN len({expr}) < 2 THEN {expr} "
        f"ELSE list_filter({expr}, lambda x, i: list_position({expr}, x) = i) END"
    )


def _domains(urls: str) -> str:
    """SQL for :func:`~ntulm.posts.extract.url_domain` of each URL (all match ``_SIMPLE_URL``)."""
    hosts = (
        f"list_transform({urls}, lambda x: "
        f"rtrim(lower(regexp_extract(x, '^(?i:https?://)?([^/?#]*)', 1)), '.'))"
    )
    return (
        f"list_transform({hosts}, lambda h: CASE WHEN contains(h, '.') THEN "
        f"CASE WHEN starts_with(h, 'www.') THEN h[5:] ELSE h END END)"
    )


_NO_USERS = "[]::STRUCT(id VARCHAR, handle VARCHAR)[]"
_CONTROL = r"[\x{00}-\x{08}\x{0B}\x{0C}\x{0E}-\x{1F}\x{7F}]"


def _fast_sql(max_chars: int) -> str:
    """SQL over table ``rows`` (``content``, ``retweet``, ``_line``): the NTU columns of every row
    and ``ok`` (the text is plain: the SQL rules are the reference's). The other columns (author,
    labels, time, language, ids) and their plainness are Arrow's (:func:`_meta_columns`)."""
    hosts = ", ".join(_q(h) for h in MEDIA_HOSTS)
    # DuckDB's trim(s, characters) is slow (0.55 of 2.3 s of this query on a 250k-row IRA file):
    # "not empty after trimming" is "holds a character outside the set", and the retweet flag is a
    # full match. Both are regexes, RE2's. The whitespace str.strip() removes from a plain row is
    # ASCII and U+00A0 (other characters are not plain); the flag is ASCII when the row is plain.
    ws = "[ \\t\\n\\r]"
    trues = "|".join(sorted(_TRUE, key=len, reverse=True))
    plain_chars = f"[\\x{{20}}-\\x{{7E}}\\t\\n\\r\\x{{A0}}\\x{{2026}}{inert_class()}]*"
    return f"""
    WITH r0 AS (
      SELECT _line, retweet,
        CASE WHEN contains(content, '&') THEN {_UNESCAPE.format(c="content")}
             ELSE content END AS content_,
        NOT contains(content, '&')
          OR regexp_full_match(content, '(?:[^&]|&(?:amp|lt|gt|quot);|&[ \\t\\n])*&?')
          AS entities_ok
      FROM rows
    ), r AS (
      SELECT *,
        CASE WHEN regexp_matches(content_, '(?i)http|www|pic')
             THEN regexp_extract_all(content_, {_q(_URL)}) ELSE [] END AS raw_urls
      FROM r0
    ), d AS (
      SELECT *,
        list_transform(raw_urls, lambda x: regexp_replace(x, {_q(_TRAIL)}, '')) AS trimmed,
        CASE WHEN len(raw_urls) = 0 THEN content_
             ELSE regexp_replace(content_, {_q(_URL)}, ' ', 'g') END AS scrubbed0
      FROM r
    ), d2 AS (
      SELECT *,
        CASE WHEN strlen(content_) = length(content_)
             THEN NOT regexp_matches(content_, {_q(_CONTROL)})
             ELSE regexp_full_match(content_, '{plain_chars}') END
        AND entities_ok
        AND regexp_matches(content_, '[^ \\t\\n\\r\\x{{A0}}]')
        AND length(content_) <= {max_chars}
        AND (len(trimmed) = 0 OR list_bool_and(list_transform(trimmed, lambda x:
              NOT regexp_matches(x, '[)\\]}}]$')
              AND regexp_full_match(x, {_q(_SIMPLE_URL)})
              AND (starts_with(lower(x), 'http') OR NOT contains(x, '://'))))
             IS NOT FALSE) AS ok,
        list_filter(trimmed, lambda x: length(x) > 4) AS urls0,
        CASE WHEN contains(scrubbed0, '@')
             THEN regexp_replace(scrubbed0, {_q(_EMAIL)}, ' ', 'g') ELSE scrubbed0 END AS scrubbed
      FROM d
    ), e AS (
      SELECT *,
        CASE WHEN len(urls0) = 0 THEN []::VARCHAR[] ELSE {_domains("urls0")} END AS domains0,
        CASE WHEN contains(scrubbed, '#') THEN
          list_transform(list_filter(regexp_extract_all(scrubbed, {_q(_HASHTAG)}, 1),
                         lambda x: regexp_matches(x, '[A-Za-z]')), lambda x: lower(x))
          ELSE [] END AS tags0,
        CASE WHEN contains(scrubbed, '@') THEN
          list_transform(list_filter(regexp_extract_all(scrubbed, {_q(_MENTION)}, 1),
                         lambda x: NOT ends_with(x, '@') AND length(x) <= 15),
                         lambda x: lower(x))
          ELSE [] END AS handles0,
        regexp_full_match(coalesce(retweet, ''), '{ws}*(?i:{trues}){ws}*') AS is_rt
      FROM d2
    ), f AS (
      SELECT *,
        CASE WHEN len(urls0) = 0 THEN []::BOOLEAN[] ELSE
        list_transform(list_zip(urls0, domains0), lambda p:
          contains(p[1], 'twi') AND coalesce(p[2] IN ({hosts}), false)) END AS is_media,
        CASE WHEN is_rt THEN
          lower(nullif(regexp_extract(content_, '^RT @([A-Za-z0-9_]{{1,15}}):', 1), '')) END AS rt
      FROM e
    ), g AS (
      SELECT *,
        list_filter(list_zip(urls0, domains0, is_media), lambda p: NOT p[3]) AS links_d,
        list_transform(list_filter(list_zip(urls0, is_media), lambda p: p[2]),
                       lambda p: p[1]) AS media0
      FROM f
    ), g2 AS (
      SELECT *,
        {_dedupe("list_transform(links_d, lambda p: p[1])")} AS links,
        list_filter(links_d, lambda p, i:
          list_position(list_transform(links_d, lambda q: q[1]), p[1]) = i) AS links_u,
        {_dedupe("media0")} AS media_, {_dedupe("tags0")} AS tags, {_dedupe("handles0")} AS handles
      FROM g
    )
    SELECT
      ok,
      _line,
      content_ AS text,
      tags AS hashtags,
      CASE WHEN len(handles) = 0 THEN {_NO_USERS} ELSE
      list_transform(list_filter(handles, lambda h: rt IS NULL OR h <> rt),
                     lambda h: {{'id': NULL::VARCHAR, 'handle': h}}) END AS mentions,
      links AS urls,
      list_filter(list_transform(links_u, lambda p: p[2]), lambda x: x IS NOT NULL) AS url_domains,
      media_ AS media,
      is_rt AS is_retweet,
      CASE WHEN rt IS NOT NULL THEN {{'id': NULL::VARCHAR, 'handle': rt}} END AS retweet_of_author
    FROM g2
    """


_PRINTABLE = r"^[\x20-\x7E\t]*$"
_BOOLS = pa.array(sorted(_TRUE | _FALSE))


def _trim(col: pa.Array) -> pa.Array:
    return pc.utf8_trim(col, " \t\n\r")


def _meta_columns(table: pa.Table, stem: str, name: str) -> tuple[dict[str, pa.Array], pa.Array]:
    """The columns that come from the CSV's other cells (author, labels, time, language, ids), by
    the reference's rules for *plain* cells, and where the row's cells are plain (printable ASCII
    and tab only, a non-empty author, a boolean ``retweet``, a time the rules below cover)."""
    n = table.num_rows
    null = pa.nulls(n, pa.string())
    col = {c: table.column(c).combine_chunks() if c in table.column_names else null
           for c in (*IRA_COLUMNS, *IRA_LABELS, "retweet", "language")}  # fmt: skip
    ok = pa.array(np.ones(n, dtype=bool))
    for c, values in col.items():
        if c != "content" and values.null_count < n:
            ok = pc.and_(ok, pc.match_substring_regex(values, _PRINTABLE))
    h0 = _trim(col["author"])
    handle = pc.utf8_lower(pc.if_else(pc.starts_with(h0, "@"), pc.utf8_slice_codeunits(h0, 1), h0))
    ok = pc.and_(ok, pc.greater(pc.utf8_length(handle), 0))
    retweet = pc.utf8_lower(_trim(pc.fill_null(col["retweet"], "")))
    ok = pc.and_(ok, pc.is_in(retweet, _BOOLS))
    date = col["publish_date"]
    ok = pc.and_(
        ok,
        pc.or_(
            pc.invert(pc.match_substring_regex(date, r"\s")),
            pc.match_substring_regex(date, f"^(?:{_ISO_SPACE.pattern})$"),
        ),
    )
    uid = _trim(col["external_author_id"])
    keep_id = pc.and_(
        pc.match_substring_regex(uid, r"^[0-9]+$"),
        pc.invert(pc.match_substring_regex(uid, r"^[0-9]{6,}0{6}$")),
    )
    lang = _trim(col["language"])
    lang = pc.if_else(pc.equal(pc.utf8_lower(lang), "english"), "en", lang)
    line = table.column("_line").combine_chunks()
    line_s = pc.cast(line, pa.string())
    out = {
        "id": pc.binary_join_element_wise(stem + ":", line_s, ""),
        "author": pa.StructArray.from_arrays(
            [pc.if_else(keep_id, uid, null), handle], fields=list(_USER_TYPE)
        ),
        "created_at": _null_if_empty(pc.replace_substring(date, " ", "T")),
        "lang": _null_if_empty(lang),
        "labels": _labels([_trim(pc.fill_null(col[k], "")) for k in IRA_LABELS], n),
        "source": pc.binary_join_element_wise(name + ":", line_s, ""),
    }
    return out, pc.fill_null(ok, False)


_USER_TYPE = POSTS_SCHEMA.field("author").type


def _null_if_empty(values: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _labels(values: list[pa.Array], n: int) -> pa.Array:
    """``{label: value}`` per row, in :data:`IRA_LABELS` order, empty values left out."""
    k = len(values)
    keep = np.stack([pc.not_equal(v, "").to_numpy(zero_copy_only=False) for v in values], axis=1)
    index = (np.arange(k)[None, :] * n + np.arange(n)[:, None])[keep]  # row-major (n, k)
    flat = pa.concat_arrays(values).take(pa.array(index))
    keys = pa.array(list(IRA_LABELS)).take(pa.array(index // max(n, 1)))
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return pa.MapArray.from_arrays(pa.array(offsets), keys, flat)


class NotPlain(Exception):
    """This file is left to the reference reader (raised before anything is read or counted)."""


# --- the reader ---------------------------------------------------------------------------------


def _header(data: bytes) -> list[str]:
    head = data[: 1 << 20].decode("utf-8", errors="surrogateescape")
    return next(csv.reader(io.StringIO(head, newline="")), [])


def ira_tables(
    reader: PostReader, path: Path, q: Quarantine, *, threads: int | None = None
) -> Iterator[pa.Table]:
    """Posts of one IRA CSV file as :data:`POSTS_SCHEMA` tables, under ``reader``'s bad-input
    policy (counts in ``reader.report``, rejects to ``q``), identical to the reference reader."""
    name, stem = str(path), reader.id_prefix(path)
    data = _read_bytes(path)
    header = _header(data)
    if not header:
        return
    missing = [c for c in IRA_COLUMNS if c not in header]
    if missing:
        raise InputError(name, 1, f"CSV header lacks column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise NotPlain("duplicate column names")
    try:
        "".join(header).encode()
    except UnicodeEncodeError:
        raise NotPlain("a header that is not UTF-8") from None
    rejects: list[tuple[int, str, Any]] = []
    table = None
    if not any("\r" in h or "\n" in h for h in header):
        table = _arrow_rows(data, header, threads != 1)
    if table is not None:
        lines = pc.add(table.column("_breaks"), 1).to_numpy()
        starts = 2 + lines.cumsum() - lines
        table = table.drop_columns(["_breaks"])
    else:
        log.info("%s: tokenized by the csv module (not plain minimal-quoted CSV)", name)
        header, rows, row_lines = _python_rows(data, name)
        valid_utf8 = is_utf8(data)
        good, starts_l = [], []
        for row, line in zip(rows, row_lines, strict=True):
            raw = ",".join(row)
            if not valid_utf8 and _SURROGATE.search(raw):
                rejects.append((line, "invalid UTF-8", raw.encode("utf-8", "surrogateescape")))
            elif len(row) != len(header):
                rejects.append((line, f"expected {len(header)} fields, got {len(row)}", raw))
            else:
                good.append(row)
                starts_l.append(line)
        cols = list(zip(*good, strict=True)) if good else [[] for _ in header]
        table = pa.table(
            [pa.array(c, pa.string()) for c in cols], names=[f"c{i}" for i in range(len(header))]
        )
        table = table.rename_columns(header)
        starts = np.asarray(starts_l, dtype=np.int64)
    table = table.append_column("_line", pa.array(starts, pa.int64()))
    sql_posts, ok = _extract(table, header, stem, name, reader.max_text_chars, threads)
    slow_idx = np.flatnonzero(~ok)
    slow_posts, slow_sources, slow_at = [], [], []
    if len(slow_idx):
        for at, row in zip(slow_idx, table.take(slow_idx).to_pylist(), strict=True):
            line = row.pop("_line")
            raw = ",".join(row[h] for h in header)
            try:
                post = parse_ira_row(row, f"{stem}:{line}")
            except RecordError as exc:
                rejects.append((line, str(exc), raw))
                continue
            problem = reader._check(post)
            if problem:
                rejects.append((line, problem, raw))
                continue
            slow_posts.append(post)
            slow_sources.append(f"{name}:{line}")
            slow_at.append(at)
    log.info(
        "%s: %d rows, %d through the reference parser (%.2f%%)",
        name, table.num_rows, len(slow_idx), 100 * len(slow_idx) / max(table.num_rows, 1),
    )  # fmt: skip
    for line, problem, raw in sorted(rejects, key=lambda r: r[0]):
        reader._reject(q, name, line, problem, raw)
    out = sql_posts.drop_columns(["_line"])
    if len(slow_idx):  # one take in line order: the fast rows kept, each parsed slow row in place
        pick = np.arange(len(ok))
        parts = [out]
        if slow_posts:
            slow = pa.Table.from_pydict(
                posts_to_columns(slow_posts, slow_sources), schema=POSTS_SCHEMA
            )
            parts.append(slow.cast(out.schema))
            pick[slow_at] = len(ok) + np.arange(len(slow_at))
            ok = ok.copy()
            ok[slow_at] = True
        out = pa.concat_tables(parts).take(pa.array(pick[ok]))
    reader.report.read += out.num_rows
    reader.report.accepted += out.num_rows
    yield out


def _extract(
    table: pa.Table, header: list[str], stem: str, name: str, max_chars: int, threads: int | None
) -> tuple[pa.Table, np.ndarray]:
    """``(posts of every row, with _line; ok)``: the posts of the rows where ``ok`` (a NumPy
    bool array) is true are the reference's; the others go to the reference parser."""
    n = table.num_rows
    line = table.column("_line").combine_chunks()
    rows = pa.table({
        "content": table.column("content"),
        "retweet": table.column("retweet") if "retweet" in header else pa.nulls(n, pa.string()),
        "_line": line,
    })  # fmt: skip
    con = duckdb.connect()
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("rows", rows)
        ntus = con.sql(_fast_sql(max_chars)).to_arrow_table()
    finally:
        con.close()
    if not ntus.column("_line").equals(pa.chunked_array([line])):  # back in the file's order
        ntus = ntus.sort_by("_line")
    meta, meta_ok = _meta_columns(table, stem, name)
    ok = pc.and_(ntus.column("ok").combine_chunks(), meta_ok)
    no_users = pa.ListArray.from_arrays(
        pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], _USER_TYPE)
    )
    cols = {
        **meta,
        **{c: ntus.column(c) for c in ntus.column_names if c not in ("ok", "_line")},
        "favorited_by": no_users,
        "retweeted_by": no_users,
        "replied_by": no_users,
        "retweet_of_id": pa.nulls(n, pa.string()),
        "reply_to_id": pa.nulls(n, pa.string()),
        "reply_to_user": pa.nulls(n, _USER_TYPE),
    }
    schema = pa.schema([pa.field("_line", pa.int64()), *POSTS_SCHEMA])
    posts = pa.table([line, *(cols[f] for f in POSTS_SCHEMA.names)], schema=schema)
    return posts, ok.to_numpy(zero_copy_only=False)
