"""Posts back out of the Parquet posts table (``posts/table.py``), by row, without loading it.

A :class:`PostsTable` is a directory of ``part-*.parquet`` files in :data:`POSTS_SCHEMA`. Each row
gets a ``rid``: its position in corpus order (parts in name order, rows in file order), which is
the order a :class:`~ntulm.posts.PostReader` yields the posts in. Queries run in DuckDB over the
view ``posts`` (the table plus ``rid``), out of core; :meth:`PostsTable.take` turns only the rows
asked for into :class:`Post` objects. Ids need not be unique: a ``rid`` is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ntulm.errors import ArtifactError
from ntulm.posts.schema import Post, UserRef

# SQL of ntulm.evaluate.splits.author_key: ``id:<id>``, else ``@<handle>``, else NULL.
AUTHOR_KEY_SQL = (
    "CASE WHEN coalesce(author.id, '') <> '' THEN 'id:' || author.id "
    "WHEN coalesce(author.handle, '') <> '' THEN '@' || author.handle END"
)


class PostsTable:
    """Read access to a posts table directory, by ``rid``."""

    def __init__(self, path: str | Path, *, memory_limit: str = "1GB", threads: int | None = None):
        self.path = Path(path)
        self.parts = sorted(self.path.glob("part-*.parquet"))
        if not self.parts:
            raise ArtifactError(f"{self.path}: no part-*.parquet posts table")
        sizes = [pq.ParquetFile(p).metadata.num_rows for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.con = duckdb.connect()
        self.con.execute(f"SET memory_limit='{memory_limit}'")
        if threads:
            self.con.execute(f"SET threads={threads}")
        parts = " UNION ALL ".join(
            f"SELECT {int(off)} + file_row_number AS rid, * EXCLUDE (file_row_number) "
            f"FROM read_parquet('{_quote(p)}', file_row_number = true)"
            for p, off in zip(self.parts, self.offsets, strict=False)
        )
        self.con.execute(f"CREATE VIEW posts AS {parts}")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def column(self, expr: str, where: str = "true") -> list[Any]:
        """``expr`` for every row (``where`` false: None), in rid order, as a Python list."""
        rows = self.con.sql(
            f"SELECT CASE WHEN {where} THEN {expr} END AS v FROM posts ORDER BY rid"
        ).to_arrow_table()
        return rows.column("v").to_pylist()

    def batches(self, query: str, batch_size: int = 20_000) -> Iterator[pa.RecordBatch]:
        """Stream the result of ``query`` (SQL over the view ``posts``) in record batches."""
        reader = self.con.sql(query).to_arrow_reader(batch_size)
        yield from reader

    def take(self, rids: Sequence[int] | np.ndarray) -> list[Post]:
        """The posts at ``rids`` (any order, repeats allowed), as :class:`Post` objects."""
        rids = np.asarray(rids, dtype=np.int64)
        if not len(rids):
            return []
        if rids.min() < 0 or rids.max() >= len(self):
            raise IndexError(f"{self.path}: rid out of range 0..{len(self) - 1}")
        wanted = pa.table({"rid": np.unique(rids)})
        self.con.register("wanted", wanted)
        try:
            table = self.con.sql(
                "SELECT * FROM posts SEMI JOIN wanted USING (rid) ORDER BY rid"
            ).to_arrow_table()
        finally:
            self.con.unregister("wanted")
        posts = rows_to_posts(table)
        at = {int(r): k for k, r in enumerate(table.column("rid").to_numpy())}
        return [posts[at[int(r)]] for r in rids]

    def close(self) -> None:
        self.con.close()


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


def _users(col: pa.Array | pa.ChunkedArray) -> list[UserRef | None]:
    """A column of user structs -> one :class:`UserRef` (None where null) per row."""
    col = _array(col)
    ids = col.field("id").to_pylist()
    handles = col.field("handle").to_pylist()
    valid = col.is_valid().to_pylist()
    return [
        UserRef(id=i, handle=h) if v else None for i, h, v in zip(ids, handles, valid, strict=True)
    ]


def _lists(col: pa.Array | pa.ChunkedArray, users: bool = False) -> list[list[Any]]:
    """A list column -> one Python list per row ([] where null or empty); ``users``: of structs,
    as :class:`UserRef`. Most rows of most list columns are empty: those cost one slice."""
    col = _array(col)
    offsets = col.offsets.to_numpy()  # of this (possibly sliced) array: values[off[k]:off[k+1]]
    start = int(offsets[0])
    if int(offsets[-1]) == start:
        return [[] for _ in range(len(col))]
    values = col.values.slice(start, int(offsets[-1]) - start)
    flat = _users(values) if users else values.to_pylist()
    bounds = (offsets - start).tolist()
    return [flat[a:b] for a, b in itertools.pairwise(bounds)]


def _array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def rows_to_posts(table: pa.Table) -> list[Post]:
    """Rows of :data:`POSTS_SCHEMA` (extra columns ignored) -> :class:`Post` objects; the inverse of
    :func:`~ntulm.posts.schema.posts_to_columns` (``url_domains`` and ``source`` are derived).
    Column by column (no per-row dicts): about 10 us a post against 25 row by row."""
    c = table.column
    cols = zip(
        c("id").to_pylist(),
        c("text").to_pylist(),
        _users(c("author")),
        c("created_at").to_pylist(),
        _lists(c("hashtags")),
        _lists(c("mentions"), users=True),
        _lists(c("urls")),
        _lists(c("media")),
        _lists(c("favorited_by"), users=True),
        _lists(c("retweeted_by"), users=True),
        _lists(c("replied_by"), users=True),
        c("is_retweet").to_pylist(),
        c("retweet_of_id").to_pylist(),
        _users(c("retweet_of_author")),
        c("reply_to_id").to_pylist(),
        _users(c("reply_to_user")),
        c("lang").to_pylist(),
        c("labels").to_pylist(),
        strict=True,
    )
    return [
        Post(
            id=pid,
            text=text,
            author=author,
            created_at=created_at,
            hashtags=hashtags,
            mentions=mentions,
            urls=urls,
            media=media,
            favorited_by=favorited_by,
            retweeted_by=retweeted_by,
            replied_by=replied_by,
            is_retweet=bool(is_retweet),
            retweet_of_id=retweet_of_id,
            retweet_of_author=retweet_of_author,
            reply_to_id=reply_to_id,
            reply_to_user=reply_to_user,
            lang=lang,
            labels=dict(labels or []),
        )
        for (
            pid, text, author, created_at, hashtags, mentions, urls, media, favorited_by,
            retweeted_by, replied_by, is_retweet, retweet_of_id, retweet_of_author, reply_to_id,
            reply_to_user, lang, labels,
        ) in cols
    ]  # fmt: skip
