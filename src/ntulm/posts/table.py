"""Stream posts into a Parquet table (:data:`~ntulm.posts.schema.POSTS_SCHEMA`) in fixed-size row
groups, so memory stays bounded whatever the number of posts. Later relational steps (the graph,
NTU statistics) run in DuckDB over this table, out of core."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ntulm.artifacts import atomic_path
from ntulm.posts.readers import PostReader, ReadReport
from ntulm.posts.schema import POSTS_SCHEMA, Post, posts_to_columns

log = logging.getLogger(__name__)


def write_posts_table(
    reader: PostReader,
    paths: Iterable[str | Path],
    out_path: str | Path,
    *,
    batch_size: int = 50_000,
    progress: bool = True,
) -> ReadReport:
    """Read every post under ``paths`` with ``reader`` and write them to ``out_path`` (Parquet).

    Returns the reader's report (read / accepted / rejected counts)."""
    posts: list[Post] = []
    sources: list[str] = []
    with (
        atomic_path(out_path) as tmp,
        pq.ParquetWriter(tmp, POSTS_SCHEMA, compression="zstd") as writer,
    ):
        bar = tqdm(desc="reading posts", unit=" posts", disable=not progress, mininterval=1.0)
        for post, src in reader.iter_posts(paths):
            posts.append(post)
            sources.append(src)
            if len(posts) >= batch_size:
                _flush(writer, posts, sources)
                bar.update(batch_size)
        bar.update(len(posts))
        _flush(writer, posts, sources)
        bar.close()
    log.info(
        "posts: read %d, accepted %d, rejected %d",
        reader.report.read,
        reader.report.accepted,
        reader.report.rejected,
    )
    return reader.report


def _flush(writer: pq.ParquetWriter, posts: list[Post], sources: list[str]) -> None:
    if not posts:
        return
    writer.write_table(pa.Table.from_pydict(posts_to_columns(posts, sources), schema=POSTS_SCHEMA))
    posts.clear()
    sources.clear()
