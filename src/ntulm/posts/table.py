"""Stream posts into a Parquet table (:data:`~ntulm.posts.schema.POSTS_SCHEMA`) in fixed-size row
groups, so memory stays bounded whatever the number of posts. Later relational steps (the graph,
NTU statistics) run in DuckDB over this table, out of core.

Several input files are read in parallel processes, one Parquet part per file; a single file is
read in this process. The reader's ``engine`` picks the fast readers (pyarrow + DuckDB) or the
Python reference ones; the table is the same.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, wait
from pathlib import Path

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ntulm.artifacts import atomic_path
from ntulm.errors import InputError
from ntulm.posts.readers import PostReader, ReadReport, no_posts_error
from ntulm.posts.schema import POSTS_SCHEMA
from ntulm.workers import worker_pool

log = logging.getLogger(__name__)


def write_posts_table(
    reader: PostReader,
    paths: Iterable[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 50_000,
    progress: bool = True,
    workers: int | None = None,
) -> ReadReport:
    """Read every post under ``paths`` with ``reader`` into ``out_dir/part-*.parquet``.

    ``workers`` processes read files in parallel (default: one per core, at most one per file).
    Returns the merged report (read / accepted / rejected counts); ``reader.report`` is updated
    and rejected records are quarantined at ``reader.quarantine_path`` in input order. A read
    that accepts no post raises :class:`InputError` saying what was skipped and rejected."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = list(paths)
    if reader.quarantine_path:  # a new read, a new quarantine: none of a previous run's records
        Path(reader.quarantine_path).unlink(missing_ok=True)
    files = reader.files(paths)  # with their id prefixes, for the reader of each file
    workers = min(workers or os.cpu_count() or 1, max(len(files), 1))
    if workers <= 1:
        _write_part(reader, files, out_dir / "part-00000.parquet", batch_size, progress)
    else:
        _write_parallel(reader, files, out_dir, batch_size, progress, workers)
    apply_duplicates(reader, out_dir, batch_size)
    rep = reader.report
    log.info("posts: read %d, accepted %d, rejected %d", rep.read, rep.accepted, rep.rejected)
    if not rep.accepted:
        raise no_posts_error(rep, paths)
    return rep


def _write_part(
    reader: PostReader,
    files: list[Path],
    out_path: Path,
    batch_size: int,
    progress: bool,
    threads: int | None = None,
) -> ReadReport:
    bar = tqdm(desc="reading posts", unit=" posts", disable=not progress, mininterval=1.0)
    with (
        atomic_path(out_path) as tmp,
        pq.ParquetWriter(tmp, POSTS_SCHEMA, compression="zstd") as writer,
    ):
        for table in reader.iter_tables(files, batch_size, threads=threads):
            writer.write_table(table, row_group_size=batch_size)
            bar.update(table.num_rows)
    bar.close()
    return reader.report


def _read_one(reader: PostReader, file: Path, out_path: Path, batch_size: int) -> ReadReport:
    # Files are read in parallel processes: one thread each for the fast reader's engines.
    return _write_part(reader, [file], out_path, batch_size, progress=False, threads=1)


def _write_parallel(
    reader: PostReader,
    files: list[Path],
    out_dir: Path,
    batch_size: int,
    progress: bool,
    workers: int,
) -> None:
    quarantine = Path(reader.quarantine_path) if reader.quarantine_path else None
    jobs = []
    for i, file in enumerate(files):
        part_q = out_dir / f"rejected-{i:05d}.jsonl" if quarantine else None
        part_reader = dataclasses.replace(reader, quarantine_path=part_q, report=ReadReport())
        jobs.append((part_reader, file, out_dir / f"part-{i:05d}.parquet", batch_size))
    with worker_pool(workers) as pool:  # workers die with this process (ntulm.workers)
        futures = [pool.submit(_read_one, *job) for job in jobs]
        bar = tqdm(total=len(files), desc="reading files", unit=" files", disable=not progress)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                # Stop what has not started; report the failure of the earliest file, as a
                # sequential read would have.
                pool.shutdown(wait=True, cancel_futures=True)
                for f in futures:
                    if not f.cancelled() and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
            bar.update(len(done))
        bar.close()
    for fut in futures:  # merge in input order
        reader.report.merge(fut.result())
    if quarantine:
        parts = sorted(out_dir.glob("rejected-*.jsonl"))
        if parts:
            with atomic_path(quarantine) as tmp, open(tmp, "wb") as dst:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, dst)
                    part.unlink()


def apply_duplicates(reader: PostReader, out_dir: Path, batch_size: int) -> None:
    """Posts whose id an earlier post (in corpus order) has: counted in the report
    (``duplicate_ids``), then per ``reader.duplicates``: ``first`` drops them from the table as
    rejections (quarantined with the place of the first), ``error`` raises
    :class:`InputError` naming both places, ``keep-all`` keeps them."""
    import duckdb
    import pyarrow as pa

    parts = sorted(out_dir.glob("part-*.parquet"))
    if not parts:
        return
    con = duckdb.connect()
    union = " UNION ALL ".join(
        f"SELECT {i} AS part, file_row_number AS row, id, source FROM read_parquet('{_sql(p)}', "
        "file_row_number = true)"
        for i, p in enumerate(parts)
    )
    # Most corpora have no repeated id: one hash aggregate says so; the window (a sort of every
    # row) runs only over the rows of ids that repeat.
    con.execute(
        f"CREATE TEMP TABLE repeated AS SELECT id FROM ({union}) GROUP BY id HAVING count(*) > 1"
    ).fetchall()
    dups = []
    if con.execute("SELECT count(*) FROM repeated").fetchall()[0][0]:
        dups = con.sql(
            f"SELECT part, row, id, source, first FROM (SELECT *, row_number() OVER w AS k, "
            f"first_value(source) OVER w AS first FROM ({union}) SEMI JOIN repeated USING (id) "
            "WINDOW w AS (PARTITION BY id ORDER BY part, row)) WHERE k > 1 ORDER BY part, row"
        ).fetchall()
    con.close()
    rep = reader.report
    rep.duplicate_ids = len(dups)
    if not dups:
        return
    part, _, pid, source, first = dups[0]
    if reader.duplicates == "error":
        raise InputError(source, None, f"duplicate post id {pid!r} (first at {first})")
    if reader.duplicates == "keep-all":
        log.warning(
            "%d posts repeat the id of an earlier post (kept: duplicates=keep-all)", len(dups)
        )
        return
    log.warning("%d posts repeat the id of an earlier post: the first is kept", len(dups))
    drop: dict[int, list[int]] = {}
    for part, row, *_ in dups:
        drop.setdefault(part, []).append(row)
    for i, rows in drop.items():
        src = pq.ParquetFile(parts[i])
        gone = set(rows)
        with (
            atomic_path(parts[i]) as tmp,
            pq.ParquetWriter(tmp, POSTS_SCHEMA, compression="zstd") as w,
        ):
            start = 0
            for batch in src.iter_batches(batch_size):
                keep = [start + k not in gone for k in range(batch.num_rows)]
                w.write_table(
                    pa.Table.from_batches([batch]).filter(pa.array(keep)), row_group_size=batch_size
                )
                start += batch.num_rows
    rep.accepted -= len(dups)
    rep.rejected += len(dups)
    rep.reasons["duplicate post id"] += len(dups)
    if reader.quarantine_path:
        with open(reader.quarantine_path, "a", encoding="utf-8") as fh:
            for _, _, pid, source, first in dups:
                file, _, line = source.rpartition(":")
                rec = {"file": file, "line": int(line) if line.isdigit() else None,
                       "problem": f"duplicate post id (first at {first})", "raw": pid}  # fmt: skip
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _sql(path: Path) -> str:
    return str(path).replace("'", "''")
