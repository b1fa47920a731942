"""Posts back out of the Parquet posts table (``posts/table.py``), by row, without loading it.

A :class:`PostsTable` is a directory of ``part-*.parquet`` files in :data:`POSTS_SCHEMA`. Each row
gets a ``rid``: its position in corpus order (parts in name order, rows in file order), which is
the order a :class:`~ntulm.posts.PostReader` yields the posts in. Queries run in DuckDB over the
view ``posts`` (the table plus ``rid``), out of core; :meth:`PostsTable.take` turns only the rows
asked for into :class:`Post` objects. Ids need not be unique: a ``rid`` is.
"""

from __future__ import annotations

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


def _user(d: dict[str, str | None] | None) -> UserRef | None:
    return None if d is None else UserRef(id=d.get("id"), handle=d.get("handle"))


def rows_to_posts(table: pa.Table) -> list[Post]:
    """Rows of :data:`POSTS_SCHEMA` (extra columns ignored) -> :class:`Post` objects; the inverse of
    :func:`~ntulm.posts.schema.posts_to_columns` (``url_domains`` and ``source`` are derived)."""
    out = []
    for r in table.to_pylist():
        out.append(
            Post(
                id=r["id"],
                text=r["text"],
                author=_user(r["author"]),
                created_at=r["created_at"],
                hashtags=list(r["hashtags"] or []),
                mentions=[_user(u) for u in r["mentions"] or []],
                urls=list(r["urls"] or []),
                media=list(r["media"] or []),
                favorited_by=[_user(u) for u in r["favorited_by"] or []],
                retweeted_by=[_user(u) for u in r["retweeted_by"] or []],
                replied_by=[_user(u) for u in r["replied_by"] or []],
                is_retweet=bool(r["is_retweet"]),
                retweet_of_id=r["retweet_of_id"],
                retweet_of_author=_user(r["retweet_of_author"]),
                reply_to_id=r["reply_to_id"],
                reply_to_user=_user(r["reply_to_user"]),
                lang=r["lang"],
                labels=dict(r["labels"] or []),
            )
        )
    return out
