"""Posts -> heterogeneous user-hashtag graph (paper §3.1, Figure 2), in DuckDB SQL, out of core.

1. Posts are streamed into a Parquet table (``posts/table.py``).
2. ``engagement``: one row per (post, user, relation, hashtag), de-duplicated by post, where
   - authored: the author of a post with the hashtag (for a retweet, the original's author);
   - favorited / retweeted / replied: each user in the engagement lists; a retweet record's
     author also retweeted; a reply's author replied to the hashtags of its parent, when the
     parent is in the corpus;
   - co_mentioned: each user mentioned in a post with the hashtag.
3. Users get one identity: an id where any record gives one (a handle seen with an id resolves
   to it), else the handle.
4. The paper's filters: hashtags used in at least ``min_hashtag_posts`` posts, then users with
   ``min_user_hashtags``..``max_user_hashtags`` unique hashtags (applied once, in that order).
5. Edges ``(lhs, rel, rhs, weight)`` with dense node ids, vocabularies, statistics.
Every relational step is SQL, so it can move to a distributed engine unchanged.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb

from ntulm.artifacts import atomic_path, mark_done, output_lock, unmark, write_json, write_text
from ntulm.errors import ArtifactError, ConfigError
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
from ntulm.posts.readers import ReadReport
from ntulm.posts.table import write_posts_table

log = logging.getLogger(__name__)


def connect(config: GraphConfig, spill_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{config.memory_limit}'")
    con.execute(f"SET temp_directory='{spill_dir}'")
    con.execute("SET preserve_insertion_order=false")
    if config.threads:
        con.execute(f"SET threads={config.threads}")
    return con


def build_graph(
    posts: Sequence[str | Path],
    out_dir: str | Path,
    config: GraphConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the graph artifact (``docs/artifacts.md``) from post files/directories; return stats."""
    config = config or GraphConfig()
    with output_lock(out_dir) as out:  # one run per directory; a dead run's .work-* removed
        unmark(out)  # unfinished until the tables are written
        t0 = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=out))
        spark = owned = None
        try:
            quarantine = out / "rejected.jsonl"
            if config.engine == "spark":  # the readers run inside Spark tasks, one per file
                from ntulm.graph import spark as engine

                spark, owned = engine.spark_session(config, progress)
                report = engine.read_posts_table(
                    spark, list(posts), config, work / "posts", quarantine
                )
            else:
                report = read_posts_table(posts, config, work / "posts", quarantine, progress)
            t_read = time.perf_counter() - t0
            return build_graph_from_table(
                work / "posts",
                out,
                config,
                posts_report=report.to_json(),
                read_seconds=t_read,
                t0=t0,
            )
        finally:
            if spark is not None and owned:
                spark.stop()
            shutil.rmtree(work, ignore_errors=True)


def build_graph_from_table(
    table: str | Path,
    out_dir: str | Path,
    config: GraphConfig | None = None,
    *,
    posts_report: dict[str, Any] | None = None,
    read_seconds: float = 0.0,
    t0: float | None = None,
    posts_filter: str | None = None,
) -> dict[str, Any]:
    """Build the graph artifact from a posts table already written (``posts/table.py``), e.g. the
    one ``ntulm run`` also builds its tasks from; the posts are not read again. ``posts_report``
    (the reader's counts) goes into ``stats.json``. ``posts_filter``: an SQL predicate over a
    posts row; only rows where it is true enter the graph (``ntulm run``'s temporal cutoff)."""
    with output_lock(out_dir):
        return _build_graph_from_table(
            Path(table),
            Path(out_dir),
            config or GraphConfig(),
            posts_report,
            read_seconds,
            t0,
            posts_filter,
        )


def _build_graph_from_table(
    table: Path,
    out: Path,
    config: GraphConfig,
    posts_report: dict[str, Any] | None,
    read_seconds: float,
    t0: float | None,
    posts_filter: str | None,
) -> dict[str, Any]:
    t0 = time.perf_counter() if t0 is None else t0
    unmark(out)
    write_text(out / "config.json", config.to_json() + "\n")
    work = Path(tempfile.mkdtemp(prefix=".spill-", dir=out))
    try:
        if config.engine == "spark":
            stats = _spark_tables(table, config, out, work, posts_filter)
        else:
            stats = _duckdb_tables(table, config, out, work, posts_filter)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not stats["edges"]:  # a finished, empty graph: say why rather than only "0 edges"
        before = stats["before_filters"]
        log.warning(
            "the graph has no edges: %d user-hashtag engagements before the filters (%d users, "
            "%d hashtags)%s",
            before["engagements"],
            before["users"],
            before["hashtags"],
            "; the posts carry no hashtag a relation can join"
            if not before["engagements"]
            else "; min_user_hashtags, max_user_hashtags or min_hashtag_posts removed them all",
        )
    stats["engine"] = config.engine
    stats["posts"] = posts_report or {}
    stats["seconds"] = {"read": round(read_seconds, 2), "total": round(time.perf_counter() - t0, 2)}
    stats["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_json(out / "stats.json", stats)
    write_json(
        out / "relations.json",
        [{"name": r, "lhs": "user", "rhs": "hashtag"} for r in stats["edges_per_relation"]],
    )
    mark_done(out, "graph", config.model_dump(mode="json"))
    return stats


def _duckdb_tables(
    table: Path, config: GraphConfig, out: Path, work: Path, posts_filter: str | None
) -> dict[str, Any]:
    con = connect(config, work)
    excluded = _exclude(con, config)
    excluded_pairs = _exclude_edges(con, config)
    where = f"WHERE {posts_filter}" if posts_filter else ""
    con.execute(
        f"CREATE VIEW p AS SELECT * FROM read_parquet('{table}/*.parquet') ANTI JOIN excluded USING (id) {where}"
    )
    stats = _build_tables(con, config, out)
    if posts_filter:
        stats["posts_filtered_out"] = con.execute(
            f"SELECT count(*) FROM read_parquet('{table}/*.parquet') "
            f"WHERE NOT coalesce({posts_filter}, false)"
        ).fetchone()[0]
    stats["posts_excluded"] = con.execute(
        f"SELECT count(*) FROM read_parquet('{table}/*.parquet') SEMI JOIN excluded USING (id)"
    ).fetchone()[0]
    stats["exclude_list_ids"] = excluded
    stats["exclude_edge_pairs"] = excluded_pairs
    con.close()
    return stats


def _spark_tables(
    table: Path, config: GraphConfig, out: Path, work: Path, posts_filter: str | None
) -> dict[str, Any]:
    if posts_filter:
        raise ConfigError("the temporal cutoff (posts_filter) runs with engine=duckdb only")
    from ntulm.graph import spark as engine

    spark, owned = engine.spark_session(config)
    try:
        return engine.build_tables(spark, table, config, out, work)
    finally:
        if owned:
            spark.stop()


def read_posts_table(
    posts: Sequence[str | Path],
    config: GraphConfig,
    table: Path,
    quarantine: Path | None,
    progress: bool,
) -> ReadReport:
    """Read ``posts`` under the config's reader settings (``config.read``) into the Parquet
    table ``table``, quarantining rejected records at ``quarantine`` (if ``read.quarantine``)."""
    return write_posts_table(
        config.read.reader(quarantine),
        posts,
        table,
        batch_size=config.batch_size,
        progress=progress,
        workers=config.read_workers,
    )


def excluded_posts(config: GraphConfig) -> list[str]:
    """The sorted post ids of ``config.exclude_posts`` (none without one)."""
    if config.exclude_posts is None:
        return []
    path = Path(config.exclude_posts)
    if not path.is_file():
        raise ArtifactError(f"{path}: exclude_posts file not found")
    return sorted(
        {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    )


def edge_exclusion_lines(pairs: Sequence[tuple[str | None, str | None, str]]) -> str:
    """The ``exclude_edges`` file for (user id, user handle, hashtag) triples."""
    return "".join(
        json.dumps({"user": {"id": i, "handle": h}, "hashtag": tag}) + "\n" for i, h, tag in pairs
    )


def excluded_edges(config: GraphConfig) -> list[tuple[str | None, str | None, str]]:
    """``(user id, handle, hashtag)`` rows of ``config.exclude_edges``; a bad line is an error
    naming the file and line."""
    if config.exclude_edges is None:
        return []
    path = Path(config.exclude_edges)
    if not path.is_file():
        raise ArtifactError(f"{path}: exclude_edges file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            user, tag = rec["user"], rec["hashtag"]
            uid, handle = user.get("id"), user.get("handle")
            if not isinstance(tag, str) or not tag or not (uid or handle):
                raise ValueError("needs a hashtag and a user id or handle")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{path}: line {n}: bad excluded edge: {exc}") from None
        rows.append((uid, handle.lstrip("@").lower() if handle else None, tag))
    return rows


def _exclude(con: duckdb.DuckDBPyConnection, config: GraphConfig) -> int:
    """Table ``excluded(id)`` from ``config.exclude_posts``; returns how many ids it lists."""
    con.execute("CREATE TABLE excluded (id VARCHAR PRIMARY KEY)")
    ids = excluded_posts(config)
    if ids:
        con.execute("INSERT INTO excluded SELECT unnest($1)", [ids])
    return len(ids)


def _exclude_edges(con: duckdb.DuckDBPyConnection, config: GraphConfig) -> int:
    """Table ``excluded_edges(id, handle, hashtag)`` from ``config.exclude_edges``; how many."""
    con.execute("CREATE TABLE excluded_edges (id VARCHAR, handle VARCHAR, hashtag VARCHAR)")
    rows = excluded_edges(config)
    if rows:
        con.executemany("INSERT INTO excluded_edges VALUES (?, ?, ?)", rows)
    return len(rows)


def _build_tables(con: duckdb.DuckDBPyConnection, config: GraphConfig, out: Path) -> dict[str, Any]:
    for name, query in graph_steps(config, "duckdb"):
        con.execute(f"CREATE TABLE {name} AS {query}")
    con.execute(
        "CREATE TABLE user_nodes AS SELECT (row_number() OVER (ORDER BY key) - 1)::BIGINT AS node_id, "
        f"* FROM ({USER_VOCAB_SQL})"
    )
    con.execute(
        "CREATE TABLE hashtag_nodes AS SELECT (row_number() OVER (ORDER BY key) - 1)::BIGINT AS node_id, "
        f"* FROM ({HASHTAG_VOCAB_SQL})"
    )
    con.execute(f"CREATE TABLE edges AS {edges_sql(config)}")
    for name, query in OUTPUTS.items():
        with atomic_path(out / name) as tmp:
            con.execute(f"COPY ({query}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
    return stats_from_rows({k: con.execute(q).fetchall() for k, q in stats_sql("duckdb").items()})
