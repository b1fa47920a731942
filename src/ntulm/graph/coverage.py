"""NTU coverage of a post set against a graph: the paper's Table 5 (appendix A).

For each graph node type of the NTU registry (``posts/ntus.py``: user = author and mentioned
users; hashtag = hashtags):
- ``ntus``: unique NTUs in the posts;
- ``pct_posts_with_ntu``: % posts with at least one NTU (the paper's column ">1 NTUs" counts
  posts with one or more, as its 100% for authors shows);
- ``pct_posts_with_multiple``: % posts with more than one NTU, in the strict sense;
- ``pct_posts_with_ntu_in_graph``: % posts with at least one NTU that is a graph node (">1 ∈ E");
- ``pct_ntu_posts_in_graph``: among posts with an NTU, % with one in the graph ("∈ E").
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ntulm.artifacts import require_done
from ntulm.graph.build import connect, read_posts_table
from ntulm.graph.config import GraphConfig
from ntulm.graph.sql import LHS, check_node_types, ntu_list
from ntulm.posts.ntus import node_types


def ntu_coverage(
    posts: Sequence[str | Path],
    graph_dir: str | Path,
    config: GraphConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Table 5 statistics of ``posts`` against the graph artifact in ``graph_dir``."""
    graph = require_done(graph_dir, "graph")
    config = config or GraphConfig()
    check_node_types()
    work = Path(tempfile.mkdtemp(prefix="ntulm-coverage-"))
    try:
        table = work / "posts"
        report = read_posts_table(posts, config, table, None, progress)
        con = connect(config, work)
        con.execute(f"CREATE VIEW p AS SELECT * FROM read_parquet('{table}/*.parquet')")
        out: dict[str, Any] = {"posts": report.accepted, "rejected": report.rejected}
        con.execute("CREATE TABLE pid AS SELECT row_number() OVER () AS pid, * FROM p")
        for ntu in node_types():
            expr = ntu_list(ntu)
            nodes = graph / f"nodes_{ntu}.parquet"
            if ntu != LHS:  # keyed by value, as in the graph
                known = f"(SELECT key FROM read_parquet('{nodes}'))"
            else:  # a user reference is in the graph by id, by the handle of an id node, or @handle
                con.execute(
                    f"CREATE OR REPLACE VIEW un AS SELECT key, handle FROM read_parquet('{nodes}')"
                )
                con.execute(
                    f"""CREATE OR REPLACE TABLE user_in AS
                    SELECT DISTINCT u FROM (SELECT unnest({expr}) AS u FROM p) r
                    WHERE EXISTS (SELECT 1 FROM un WHERE un.key = 'id:' || r.u.id
                          OR (r.u.handle IS NOT NULL AND (un.handle = r.u.handle OR un.key = '@' || r.u.handle)))"""
                )
                known = "(SELECT u AS key FROM user_in)"
            row = con.execute(
                f"""WITH x AS (SELECT DISTINCT pid, unnest({expr}) AS x FROM pid),
                     per AS (SELECT pid, count(*) AS n, count(k.key) AS n_known
                             FROM x LEFT JOIN {known} k ON k.key = x.x GROUP BY pid)
                SELECT (SELECT count(*) FROM p), count(*) FILTER (WHERE n >= 1),
                       count(*) FILTER (WHERE n > 1), count(*) FILTER (WHERE n_known >= 1)
                FROM per"""
            ).fetchone()
            uniq = con.execute(
                f"SELECT count(DISTINCT x) FROM (SELECT unnest({expr}) AS x FROM p)"
            ).fetchone()[0]
            n, with_ntu, multiple, known_n = row
            out[ntu] = {
                "ntus": uniq,
                "pct_posts_with_ntu": _pct(with_ntu, n),
                "pct_posts_with_multiple": _pct(multiple, n),
                "pct_posts_with_ntu_in_graph": _pct(known_n, n),
                "pct_ntu_posts_in_graph": _pct(known_n, with_ntu),
            }
        con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


_PAPER_ORDER = {"hashtag": 0, "user": 1}  # Table 5's rows; other node types after them


def _pct(a: int, b: int) -> float:
    return round(100.0 * a / b, 2) if b else 0.0


def format_table5(name: str, cov: dict[str, Any]) -> str:
    """The paper's Table 5 row layout, as Markdown."""
    head = (
        "| posts | type | NTUs | posts with NTU | posts with >1 NTU | with NTU in graph | NTU posts in graph |\n"
        "|---|---|---|---|---|---|---|"
    )
    rows = [
        f"| {cov['posts']:,} | {t} | {c['ntus']:,} | {c['pct_posts_with_ntu']:.2f}% | "
        f"{c['pct_posts_with_multiple']:.2f}% | {c['pct_posts_with_ntu_in_graph']:.2f}% | {c['pct_ntu_posts_in_graph']:.0f}% |"
        for t, c in (
            (t, cov[t]) for t in sorted(node_types(), key=lambda t: _PAPER_ORDER.get(t, 2))
        )
    ]
    return f"{name}\n\n{head}\n" + "\n".join(rows)
