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
from ntulm.errors import ArtifactError
from ntulm.graph.config import GraphConfig
from ntulm.posts.readers import PostReader, ReadReport
from ntulm.posts.table import write_posts_table

log = logging.getLogger(__name__)

# (relation, SQL yielding post_id, u (user struct), h (hashtag)); `p` is the posts table.
_ENGAGEMENT_SQL = {
    "authored": [
        "SELECT id AS post_id, author AS u, unnest(hashtags) AS h FROM p WHERE NOT is_retweet AND author IS NOT NULL",
        "SELECT coalesce(retweet_of_id, id || ':original') AS post_id, retweet_of_author AS u, unnest(hashtags) AS h "
        "FROM p WHERE is_retweet AND retweet_of_author IS NOT NULL",
    ],
    "favorited": [
        "SELECT post_id, u, unnest(hashtags) AS h FROM (SELECT id AS post_id, unnest(favorited_by) AS u, hashtags FROM p)"
    ],
    "co_mentioned": [
        "SELECT post_id, u, unnest(hashtags) AS h FROM (SELECT id AS post_id, unnest(mentions) AS u, hashtags FROM p)"
    ],
    "retweeted": [
        "SELECT post_id, u, unnest(hashtags) AS h FROM (SELECT id AS post_id, unnest(retweeted_by) AS u, hashtags FROM p)",
        "SELECT id AS post_id, author AS u, unnest(hashtags) AS h FROM p WHERE is_retweet AND author IS NOT NULL",
    ],
    "replied": [
        "SELECT post_id, u, unnest(hashtags) AS h FROM (SELECT id AS post_id, unnest(replied_by) AS u, hashtags FROM p)",
        "SELECT c.id AS post_id, c.author AS u, unnest(par.hashtags) AS h FROM p c "
        "JOIN (SELECT DISTINCT ON (id) id, hashtags FROM p) par ON par.id = c.reply_to_id WHERE c.author IS NOT NULL",
    ],
}

_USER_REFS = [
    "SELECT author AS u FROM p",
    "SELECT retweet_of_author AS u FROM p",
    "SELECT reply_to_user AS u FROM p",
    "SELECT unnest(mentions) AS u FROM p",
    "SELECT unnest(favorited_by) AS u FROM p",
    "SELECT unnest(retweeted_by) AS u FROM p",
    "SELECT unnest(replied_by) AS u FROM p",
]


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
        try:
            quarantine = out / "rejected.jsonl"
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
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


def read_posts_table(
    posts: Sequence[str | Path],
    config: GraphConfig,
    table: Path,
    quarantine: Path | None,
    progress: bool,
) -> ReadReport:
    """Read ``posts`` under the config's bad-input policy into the Parquet table ``table``."""
    reader = PostReader(
        format=config.format,
        strict=config.strict,
        max_text_chars=config.max_text_chars,
        quarantine_path=quarantine,
        engine=config.reader,
        **config.reader_options(),
        duplicates=config.duplicates,
    )
    return write_posts_table(
        reader,
        posts,
        table,
        batch_size=config.batch_size,
        progress=progress,
        workers=config.read_workers,
    )


def _exclude(con: duckdb.DuckDBPyConnection, config: GraphConfig) -> int:
    """Table ``excluded(id)`` from ``config.exclude_posts``; returns how many ids it lists."""
    con.execute("CREATE TABLE excluded (id VARCHAR PRIMARY KEY)")
    if config.exclude_posts is None:
        return 0
    path = Path(config.exclude_posts)
    if not path.is_file():
        raise ArtifactError(f"{path}: exclude_posts file not found")
    ids = sorted(
        {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    )
    con.execute("INSERT INTO excluded SELECT unnest($1)", [ids])
    return len(ids)


def edge_exclusion_lines(pairs: Sequence[tuple[str | None, str | None, str]]) -> str:
    """The ``exclude_edges`` file for (user id, user handle, hashtag) triples."""
    return "".join(
        json.dumps({"user": {"id": i, "handle": h}, "hashtag": tag}) + "\n" for i, h, tag in pairs
    )


def _exclude_edges(con: duckdb.DuckDBPyConnection, config: GraphConfig) -> int:
    """Table ``excluded_edges(uid, handle, hashtag)`` from ``config.exclude_edges``; how many."""
    con.execute("CREATE TABLE excluded_edges (uid VARCHAR, handle VARCHAR, hashtag VARCHAR)")
    if config.exclude_edges is None:
        return 0
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
    if rows:
        con.executemany("INSERT INTO excluded_edges VALUES (?, ?, ?)", rows)
    return len(rows)


def _build_tables(con: duckdb.DuckDBPyConnection, config: GraphConfig, out: Path) -> dict[str, Any]:
    # Handle -> id, where some record gives both (the most frequent pairing wins).
    refs = " UNION ALL ".join(_USER_REFS)
    con.execute(
        f"""CREATE TABLE alias AS
        SELECT u.handle AS handle, arg_max(u.id, n) AS id FROM (
            SELECT u, count(*) AS n FROM ({refs}) WHERE u.id IS NOT NULL AND u.handle IS NOT NULL GROUP BY u
        ) GROUP BY u.handle"""
    )
    con.execute(
        f"""CREATE TABLE id_handle AS
        SELECT u.id AS id, arg_max(u.handle, n) AS handle FROM (
            SELECT u, count(*) AS n FROM ({refs}) WHERE u.id IS NOT NULL AND u.handle IS NOT NULL GROUP BY u
        ) GROUP BY u.id"""
    )
    parts = [
        f"SELECT post_id, u, '{rel}' AS rel, h FROM ({sql})"
        for rel in config.relations
        for sql in _ENGAGEMENT_SQL[rel]
    ]
    con.execute(
        f"""CREATE TABLE engagement AS
        SELECT DISTINCT e.post_id, CASE WHEN e.u.id IS NOT NULL THEN 'id:' || e.u.id
                                        WHEN a.id IS NOT NULL THEN 'id:' || a.id
                                        ELSE '@' || e.u.handle END AS user_key, e.rel, e.h AS hashtag
        FROM ({" UNION ALL ".join(parts)}) e LEFT JOIN alias a ON a.handle = e.u.handle
        WHERE e.h IS NOT NULL AND e.h <> '' AND (e.u.id IS NOT NULL OR e.u.handle IS NOT NULL)"""
    )
    # Strict exclusion: (user, hashtag) pairs give no edge, whatever the relation or post. The
    # users are resolved to one identity exactly as the engagement rows are.
    removed = con.execute(
        """DELETE FROM engagement WHERE EXISTS (
            SELECT 1 FROM (
                SELECT CASE WHEN x.uid IS NOT NULL THEN 'id:' || x.uid
                            WHEN a.id IS NOT NULL THEN 'id:' || a.id
                            ELSE '@' || x.handle END AS user_key, x.hashtag
                FROM excluded_edges x LEFT JOIN alias a ON a.handle = x.handle) x
            WHERE x.user_key = engagement.user_key AND x.hashtag = engagement.hashtag)"""
    ).fetchone()[0]
    before = con.execute(
        "SELECT count(DISTINCT user_key), count(DISTINCT hashtag), count(*) FROM engagement"
    ).fetchone()
    max_tags = config.max_user_hashtags if config.max_user_hashtags is not None else 2**62
    con.execute(
        f"""CREATE TABLE kept AS
        WITH tags AS (SELECT hashtag FROM engagement GROUP BY hashtag
                      HAVING count(DISTINCT post_id) >= {config.min_hashtag_posts}),
             e AS (SELECT * FROM engagement SEMI JOIN tags USING (hashtag)),
             users AS (SELECT user_key FROM e GROUP BY user_key
                       HAVING count(DISTINCT hashtag) BETWEEN {config.min_user_hashtags} AND {max_tags})
        SELECT * FROM e SEMI JOIN users USING (user_key)"""
    )
    con.execute(
        """CREATE TABLE user_nodes AS
        SELECT (row_number() OVER (ORDER BY user_key) - 1)::BIGINT AS node_id, user_key AS key,
               CASE WHEN starts_with(user_key, 'id:') THEN user_key[4:] END AS user_id,
               CASE WHEN starts_with(user_key, '@') THEN user_key[2:] ELSE ih.handle END AS handle,
               n AS posts
        FROM (SELECT user_key, count(DISTINCT post_id) AS n FROM kept GROUP BY user_key) k
        LEFT JOIN id_handle ih ON 'id:' || ih.id = k.user_key"""
    )
    con.execute(
        """CREATE TABLE hashtag_nodes AS
        SELECT (row_number() OVER (ORDER BY hashtag) - 1)::BIGINT AS node_id, hashtag AS key, n AS posts
        FROM (SELECT hashtag, count(DISTINCT post_id) AS n FROM kept GROUP BY hashtag)"""
    )
    weight = "count(*)" if config.weighting == "count" else "1"
    con.execute(
        f"""CREATE TABLE edges AS
        SELECT un.node_id AS lhs, k.rel AS rel, hn.node_id AS rhs, ({weight})::FLOAT AS weight
        FROM kept k JOIN user_nodes un ON un.key = k.user_key JOIN hashtag_nodes hn ON hn.key = k.hashtag
        GROUP BY un.node_id, k.rel, hn.node_id"""
    )
    for name, query in {
        "edges.parquet": "SELECT * FROM edges ORDER BY rel, lhs, rhs",
        "nodes_user.parquet": "SELECT * FROM user_nodes ORDER BY node_id",
        "nodes_hashtag.parquet": "SELECT * FROM hashtag_nodes ORDER BY node_id",
    }.items():
        with atomic_path(out / name) as tmp:
            con.execute(f"COPY ({query}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
    return {**_stats(con, before), "engagements_excluded_by_edge": removed}


def _summary(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, float]:
    row = con.execute(
        f"""SELECT min(d), quantile_cont(d, 0.5), avg(d), quantile_cont(d, 0.9), quantile_cont(d, 0.99), max(d)
        FROM ({query})"""
    ).fetchone()
    keys = ("min", "median", "mean", "p90", "p99", "max")
    return {
        k: (round(float(v), 2) if v is not None else 0.0) for k, v in zip(keys, row, strict=True)
    }


def _stats(con: duckdb.DuckDBPyConnection, before: tuple) -> dict[str, Any]:
    per_rel = con.execute(
        "SELECT rel, count(*), sum(weight) FROM edges GROUP BY rel ORDER BY rel"
    ).fetchall()
    n_users = con.execute("SELECT count(*) FROM user_nodes").fetchone()[0]
    n_tags = con.execute("SELECT count(*) FROM hashtag_nodes").fetchone()[0]
    unresolved = con.execute("SELECT count(*) FROM user_nodes WHERE user_id IS NULL").fetchone()[0]
    posts_with_edges = con.execute("SELECT count(DISTINCT post_id) FROM kept").fetchone()[0]
    return {
        "nodes": {"user": n_users, "hashtag": n_tags},
        "users_by_handle_only": unresolved,
        "edges": sum(r[1] for r in per_rel),
        "edges_per_relation": {r[0]: r[1] for r in per_rel},
        "weight_per_relation": {r[0]: float(r[2]) for r in per_rel},
        "posts_with_edges": posts_with_edges,
        "before_filters": {"users": before[0], "hashtags": before[1], "engagements": before[2]},
        "degree": {
            "user_unique_hashtags": _summary(
                con, "SELECT count(DISTINCT rhs) AS d FROM edges GROUP BY lhs"
            ),
            "hashtag_unique_users": _summary(
                con, "SELECT count(DISTINCT lhs) AS d FROM edges GROUP BY rhs"
            ),
        },
    }
