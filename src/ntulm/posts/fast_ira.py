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
from ntulm.posts.formats import IRA_COLUMNS, IRA_LABELS, RecordError, parse_ira_row
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
        data = gzip.decompress(data)
    return data[3:] if data[:3] == b"\xef\xbb\xbf" else data


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
    body = data[len(hdr) :]
    if not body:
        return pa.table({h: pa.array([], pa.string()) for h in header})
    try:
        table = pcsv.read_csv(
            pa.py_buffer(body),
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
    buf = back.buffers()[2]
    expected = body if body.endswith(term) else body + term
    if end - start != len(expected) or buf[start:end].to_pybytes() != expected:
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


# html.unescape for text whose every '&' starts &amp; &lt; &gt; or &quot; (checked): one pass of
# the reference equals these replacements in this order, &amp; last.
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


def _fast_sql(header: list[str], stem: str, name: str, max_chars: int) -> str:
    """SQL over table ``rows`` (the CSV columns and ``_line``): every row with ``ok`` (plain: the
    SQL rules are the reference's) and the columns of :data:`POSTS_SCHEMA`."""
    names = (*IRA_COLUMNS, *IRA_LABELS, "retweet", "language")
    col = {c: '"' + c.replace('"', '""') + '"' if c in header else "NULL::VARCHAR" for c in names}
    meta = " || chr(9) || ".join(f"coalesce({col[c]}, '')" for c in col if c != "content")
    hosts = ", ".join(_q(h) for h in MEDIA_HOSTS)
    ws = "' \t\n\r'"  # the ASCII whitespace str.strip() removes (others are not plain)
    labels = ", ".join(
        f"{{'key': {_q(k)}, 'value': trim(coalesce({col[k]}, ''), {ws})}}" for k in IRA_LABELS
    )
    handle = "lower(CASE WHEN starts_with(h0, '@') THEN h0[2:] ELSE h0 END)"
    content = col["content"]
    bools = ", ".join(_q(v) for v in sorted(_TRUE | _FALSE))
    trues = ", ".join(_q(v) for v in sorted(_TRUE))
    plain_chars = f"[\\x{{20}}-\\x{{7E}}\\t\\n\\r\\x{{A0}}\\x{{2026}}{inert_class()}]*"
    return f"""
    WITH r0 AS (
      SELECT _line, {content} AS content, {col["author"]} AS author,
        {col["external_author_id"]} AS external_author_id, {col["publish_date"]} AS publish_date,
        {col["retweet"]} AS retweet, {col["language"]} AS language, {meta} AS meta,
        {", ".join(f"{col[k]} AS {k}" for k in IRA_LABELS)},
        CASE WHEN contains({content}, '&') THEN {_UNESCAPE.format(c=content)}
             ELSE {content} END AS content_,
        NOT contains({content}, '&')
          OR regexp_full_match({content}, '(?:[^&]|&(?:amp|lt|gt|quot);)*') AS entities_ok
      FROM rows
    ), r AS (
      SELECT *,
        regexp_extract_all(content_, {_q(_URL)}) AS raw_urls,
        trim(author, {ws}) AS h0,
        trim(external_author_id, {ws}) AS uid
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
        AND regexp_full_match(meta, '[\\x{{20}}-\\x{{7E}}\\t]*')
        AND entities_ok
        AND NOT regexp_full_match(content_, '[ \\t\\n\\r\\x{{A0}}]*')
        AND length(content_) <= {max_chars}
        AND length({handle}) > 0
        AND lower(trim(coalesce(retweet, ''), {ws})) IN ({bools})
        AND (NOT regexp_matches(coalesce(publish_date, ''), '\\s')
             OR regexp_full_match(publish_date, {_q(_ISO_SPACE.pattern)}))
        AND (list_bool_and(list_transform(trimmed, lambda x:
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
        {_domains("urls0")} AS domains0,
        CASE WHEN contains(scrubbed, '#') THEN
          list_transform(list_filter(regexp_extract_all(scrubbed, {_q(_HASHTAG)}, 1),
                         lambda x: regexp_matches(x, '[A-Za-z]')), lambda x: lower(x))
          ELSE [] END AS tags0,
        CASE WHEN contains(scrubbed, '@') THEN
          list_transform(list_filter(regexp_extract_all(scrubbed, {_q(_MENTION)}, 1),
                         lambda x: NOT ends_with(x, '@') AND length(x) <= 15),
                         lambda x: lower(x))
          ELSE [] END AS handles0,
        lower(trim(coalesce(retweet, ''), {ws})) IN ({trues}) AS is_rt
      FROM d2
    ), f AS (
      SELECT *,
        list_transform(list_zip(urls0, domains0), lambda p:
          contains(p[1], 'twi') AND coalesce(p[2] IN ({hosts}), false)) AS is_media,
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
      {_q(stem + ":")} || _line AS id,
      content_ AS text,
      {{'id': CASE WHEN regexp_full_match(uid, '[0-9]+')
                   AND NOT regexp_full_match(uid, '[0-9]{{6,}}0{{6}}') THEN uid END,
        'handle': {handle}}} AS author,
      nullif(replace(publish_date, ' ', 'T'), '') AS created_at,
      tags AS hashtags,
      list_transform(list_filter(handles, lambda h: rt IS NULL OR h <> rt),
                     lambda h: {{'id': NULL::VARCHAR, 'handle': h}}) AS mentions,
      links AS urls,
      list_filter(list_transform(links_u, lambda p: p[2]), lambda x: x IS NOT NULL) AS url_domains,
      media_ AS media,
      {_NO_USERS} AS favorited_by, {_NO_USERS} AS retweeted_by, {_NO_USERS} AS replied_by,
      is_rt AS is_retweet,
      NULL::VARCHAR AS retweet_of_id,
      CASE WHEN rt IS NOT NULL THEN {{'id': NULL::VARCHAR, 'handle': rt}} END AS retweet_of_author,
      NULL::VARCHAR AS reply_to_id,
      NULL::STRUCT(id VARCHAR, handle VARCHAR) AS reply_to_user,
      CASE WHEN lower(trim(language, {ws})) = 'english' THEN 'en'
           ELSE nullif(trim(language, {ws}), '') END AS lang,
      map_from_entries(list_filter([{labels}], lambda x: x.value <> '')) AS labels,
      {_q(name + ":")} || _line AS source
    FROM g2
    ORDER BY _line
    """


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
        valid_utf8 = _is_utf8(data)
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
    fast, slow_idx = _extract(table, header, stem, name, reader.max_text_chars, threads)
    slow_posts, slow_sources, slow_lines = [], [], []
    if len(slow_idx):
        for row in table.take(slow_idx).to_pylist():
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
            slow_lines.append(line)
    log.info(
        "%s: %d rows, %d through the reference parser (%.2f%%)",
        name, table.num_rows, len(slow_idx), 100 * len(slow_idx) / max(table.num_rows, 1),
    )  # fmt: skip
    for line, problem, raw in sorted(rejects, key=lambda r: r[0]):
        reader._reject(q, name, line, problem, raw)
    parts = [fast]
    if slow_posts:
        slow = pa.Table.from_pydict(posts_to_columns(slow_posts, slow_sources), schema=POSTS_SCHEMA)
        parts.append(
            slow.add_column(0, "_line", pa.array(slow_lines, pa.int64())).cast(fast.schema)
        )
    out = pa.concat_tables(parts).sort_by("_line").drop_columns(["_line"])
    reader.report.read += out.num_rows
    reader.report.accepted += out.num_rows
    yield out


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _extract(
    table: pa.Table, header: list[str], stem: str, name: str, max_chars: int, threads: int | None
) -> tuple[pa.Table, pa.Array]:
    """``(posts of the plain rows with _line, row indices for the reference parser)``."""
    con = duckdb.connect()
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("rows", table.select([*header, "_line"]))
        out = con.sql(_fast_sql(header, stem, name, max_chars)).to_arrow_table()
    finally:
        con.close()
    ok = out.column("ok")
    slow = pc.indices_nonzero(pc.invert(ok))
    fast = out.filter(ok).select(["_line", *POSTS_SCHEMA.names])
    schema = pa.schema([pa.field("_line", pa.int64()), *POSTS_SCHEMA])
    return fast.cast(schema), slow
