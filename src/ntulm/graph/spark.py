"""The graph stage on Apache Spark (``engine=spark``): the same artifact as the DuckDB path.

1. The input files are read by the project's own readers inside Spark: one task per file runs
   :class:`~ntulm.posts.PostReader` (``mapInArrow``) and Spark writes the posts table (Parquet,
   :data:`~ntulm.posts.schema.POSTS_SCHEMA`). Each task leaves its read report and quarantined
   records beside the table; the driver merges them in input order, as the DuckDB path does.
2. The relational steps are the SQL of ``graph/sql.py`` run by Spark SQL, each computed once and
   persisted (memory, then the executors' disks): the DuckDB path's ``CREATE TABLE``.
3. Node ids are the keys' sorted positions, numbered without a single-partition window: a global
   sort, then each partition's offset from the row counts of the partitions before it.
4. The sorted output parts are streamed by the driver into the artifact's single Parquet files.

On a cluster, ``--out`` must be on a filesystem the driver and every executor see (e.g. NFS), the
executors need ``ntulm[spark]`` installed, and the input paths must be readable from them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ntulm.artifacts import atomic_path, write_json
from ntulm.errors import ConfigError, InputError
from ntulm.graph.config import GraphConfig
from ntulm.graph.sql import (
    HASHTAG_VOCAB_SQL,
    OUTPUTS,
    USER_VOCAB_SQL,
    edges_sql,
    graph_steps,
    stats_from_rows,
    stats_sql,
)
from ntulm.posts.readers import PostReader, ReadReport, no_posts_error
from ntulm.posts.schema import POSTS_SCHEMA
from ntulm.posts.table import apply_duplicates

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# The artifact's column types (the DuckDB path's): Spark's are cast to these.
ARTIFACT_SCHEMAS = {
    "edges.parquet": pa.schema(
        [("lhs", pa.int64()), ("rel", pa.string()), ("rhs", pa.int64()), ("weight", pa.float32())]
    ),
    "nodes_user.parquet": pa.schema(
        [
            ("node_id", pa.int64()),
            ("key", pa.string()),
            ("user_id", pa.string()),
            ("handle", pa.string()),
            ("posts", pa.int64()),
        ]
    ),
    "nodes_hashtag.parquet": pa.schema(
        [("node_id", pa.int64()), ("key", pa.string()), ("posts", pa.int64())]
    ),
}


def spark_session(config: GraphConfig, progress: bool = True) -> tuple[SparkSession, bool]:
    """The active Spark session, or a new one from the config; and whether it was made here."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "engine=spark needs PySpark: pip install 'ntulm[spark]' (and a Java 17+ runtime)"
        ) from None
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    builder = SparkSession.builder.appName("ntulm build-graph")
    if config.spark_master:
        builder = builder.master(config.spark_master)
    master = config.spark_master or "local[*]"
    if master.startswith("local") and "PYSPARK_PYTHON" not in os.environ:
        # PySpark's workers run $PYSPARK_PYTHON (default: python3 on the PATH); locally they must
        # run this interpreter, which has ntulm and pyarrow
        os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = builder.config("spark.ui.showConsoleProgress", str(progress).lower())
    for key, value in config.spark_conf.items():
        builder = builder.config(key, str(value).lower() if isinstance(value, bool) else str(value))
    try:
        return builder.getOrCreate(), True
    except Exception as exc:  # no Java, a bad master URL: one line, not a JVM trace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"engine=spark: cannot start Spark ({master}): {first}") from None


def _arrow_to_spark(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _read_task(reader: PostReader, work: str, batch_size: int):  # noqa: ANN202 - mapInArrow fn
    """The function each Spark task runs: rows ``(i, path)`` -> the posts of those files."""

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for i, path in zip(
                batch.column("i").to_pylist(), batch.column("path").to_pylist(), strict=True
            ):
                part = dataclasses.replace(
                    reader, quarantine_path=f"{work}/rejected-{i:05d}.jsonl", report=ReadReport()
                )
                error = None
                try:
                    for table in part.iter_tables([path], batch_size, threads=1):
                        yield from table.to_batches()
                except InputError as exc:  # strict mode: reported by the driver, in input order
                    error = {"file": exc.path, "line": exc.line, "problem": exc.problem}
                write_json(f"{work}/report-{i:05d}.json", {**part.report.to_json(), "error": error})

    return read


def read_posts_table(
    spark: SparkSession,
    posts: list[str | Path],
    config: GraphConfig,
    table: Path,
    quarantine: Path | None,
) -> ReadReport:
    """Read the input files in Spark tasks (one per file) into the Parquet posts table ``table``."""
    # paths as given, so that reports and quarantine name files as the DuckDB path does; on a
    # cluster give absolute paths on a shared filesystem
    reader = config.read.reader()  # the quarantine: each task's own file, merged below
    files = [str(p) for p in reader.files(posts)]  # (and their id prefixes, for the tasks)
    work = table.parent / "read"
    work.mkdir(parents=True, exist_ok=True)
    rows = spark.sparkContext.parallelize(list(enumerate(files)), max(len(files), 1))
    frame = spark.createDataFrame(rows, "i int, path string")
    read = _read_task(reader, str(work), config.batch_size)
    frame.mapInArrow(read, _arrow_to_spark(POSTS_SCHEMA)).write.parquet(
        str(table), compression="zstd"
    )
    report = ReadReport()
    for i in range(len(files)):
        part = json.loads((work / f"report-{i:05d}.json").read_text(encoding="utf-8"))
        if part["error"]:
            e = part["error"]
            raise InputError(e["file"], e["line"], e["problem"])
        report.merge(
            ReadReport(
                read=part["read"],
                accepted=part["accepted"],
                rejected=part["rejected"],
                reasons=Counter(part["rejected_by_reason"]),
                files=part["files"],
                files_skipped=part["files_skipped"],
            )
        )
    report.files_skipped = {**reader.report.files_skipped, **report.files_skipped}
    for path, why in report.files_skipped.items():
        log.warning("%s: skipped: %s", path, why)
    parts = sorted(work.glob("rejected-*.jsonl"))
    if quarantine is not None and config.read.quarantine:
        Path(quarantine).unlink(missing_ok=True)
        if parts:
            with atomic_path(quarantine) as tmp, open(tmp, "wb") as dst:
                for part in parts:
                    dst.write(part.read_bytes())
    # the duplicates policy over the whole table, as the DuckDB engine's read applies it
    reader.report = report
    reader.quarantine_path = quarantine if config.read.quarantine else None
    apply_duplicates(reader, table, config.batch_size)
    if not report.accepted:
        raise no_posts_error(report)
    log.info(
        "posts: read %d, accepted %d, rejected %d", report.read, report.accepted, report.rejected
    )
    return report


def _materialise(frame: DataFrame, name: str) -> DataFrame:
    """View ``name`` over ``frame`` computed once (the DuckDB path's ``CREATE TABLE``): kept in
    executor memory, spilled to their local disks beyond; later steps read it, not its lineage."""
    from pyspark import StorageLevel

    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    frame.count()
    frame.createOrReplaceTempView(name)
    return frame


def _numbered(spark: SparkSession, query: str, name: str) -> None:
    """View ``name``: the rows of ``query`` with ``node_id`` = position of ``key`` in sorted order,
    dense from 0, computed partition-parallel (no window over one partition)."""
    from pyspark.sql import functions as F

    ordered = (
        spark.sql(query)
        .orderBy("key")
        .withColumn("_part", F.spark_partition_id())
        .withColumn("_row", F.monotonically_increasing_id())  # (partition << 33) + row in it
    )
    frame = _materialise(ordered, f"{name}_sorted")
    counts = sorted(frame.groupBy("_part").count().collect())
    offsets, total = [], 0
    for part, n in counts:
        offsets.append((part, total))
        total += n
    off = spark.createDataFrame(offsets, "_part int, _off bigint")
    node_id = F.col("_off") + F.col("_row") - F.shiftleft(F.col("_part").cast("bigint"), 33)
    cols = [c for c in frame.columns if not c.startswith("_")]
    numbered = frame.join(F.broadcast(off), "_part").select(node_id.alias("node_id"), *cols)
    _materialise(numbered, name)


def _write_artifact(spark: SparkSession, query: str, work: Path, out_file: Path) -> None:
    """Write ``query``'s sorted rows to one Parquet file: Spark writes the sorted parts, the driver
    streams them in part order (the global order) into ``out_file``."""
    parts_dir = work / f"out-{out_file.stem}"
    spark.sql(query).write.parquet(str(parts_dir))
    parts = sorted(parts_dir.glob("part-*.parquet"))
    schema = _required_where_no_nulls(ARTIFACT_SCHEMAS[out_file.name], parts)
    with (
        atomic_path(out_file) as tmp,
        pq.ParquetWriter(tmp, schema, compression="zstd") as writer,
    ):
        for part in parts:
            pf = pq.ParquetFile(part)
            for i in range(pf.num_row_groups):
                writer.write_table(pf.read_row_group(i).select(schema.names).cast(schema))


def _required_where_no_nulls(schema: pa.Schema, parts: list[Path]) -> pa.Schema:
    """DuckDB writes a column as required (not null) when it holds no null; so do we, from the
    null counts in the parts' metadata (a column without statistics stays nullable)."""
    nulls = dict.fromkeys(schema.names, 0)
    for part in parts:
        meta = pq.ParquetFile(part).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                col = meta.row_group(g).column(c)
                stats = col.statistics
                known = stats is not None and stats.has_null_count
                if col.path_in_schema in nulls:
                    nulls[col.path_in_schema] += stats.null_count if known else 1
    return pa.schema([f.with_nullable(nulls[f.name] > 0) for f in schema])


def build_tables(
    spark: SparkSession, table: Path, config: GraphConfig, out: Path, work: Path
) -> dict[str, Any]:
    """Run the graph steps over the posts table ``table``; write the artifact files; return the
    graph part of ``stats.json`` plus the exclusion counts."""
    from ntulm.graph.build import excluded_edges, excluded_posts

    ids = excluded_posts(config)
    pairs = excluded_edges(config)
    spark.createDataFrame([(i,) for i in ids], "id string").createOrReplaceTempView("excluded")
    spark.createDataFrame(
        pairs, "id string, handle string, hashtag string"
    ).createOrReplaceTempView("excluded_edges")
    spark.read.parquet(str(table / "part-*.parquet")).createOrReplaceTempView("posts")
    spark.sql(
        "SELECT * FROM posts r WHERE NOT EXISTS (SELECT 1 FROM excluded x WHERE x.id = r.id)"
    ).createOrReplaceTempView("p")
    try:
        return _run_steps(spark, config, out, work, ids, pairs)
    finally:
        spark.catalog.clearCache()  # the persisted steps; the session may build another graph


def _run_steps(
    spark: SparkSession,
    config: GraphConfig,
    out: Path,
    work: Path,
    ids: list[str],
    pairs: list[tuple[str | None, str | None, str]],
) -> dict[str, Any]:
    for name, query in graph_steps(config, "spark"):
        _materialise(spark.sql(query), name)
    _numbered(spark, USER_VOCAB_SQL, "user_nodes")
    _numbered(spark, HASHTAG_VOCAB_SQL, "hashtag_nodes")
    _materialise(spark.sql(edges_sql(config)), "edges")
    for name, query in OUTPUTS.items():
        _write_artifact(spark, query, work, out / name)
    rows = {k: [tuple(r) for r in spark.sql(q).collect()] for k, q in stats_sql("spark").items()}
    stats = stats_from_rows(rows)
    stats["posts_excluded"] = spark.sql(
        "SELECT count(*) FROM posts r WHERE EXISTS (SELECT 1 FROM excluded x WHERE x.id = r.id)"
    ).collect()[0][0]
    stats["exclude_list_ids"] = len(ids)
    stats["exclude_edge_pairs"] = len(pairs)
    stats["spark_master"] = spark.sparkContext.master
    return stats
