"""``ntulm build-graph`` and ``ntulm ntu-stats``."""

from __future__ import annotations

import argparse
import json
import sys

from ntulm.cli import add_config_args, add_posts_args, read_overrides
from ntulm.graph import GraphConfig, build_graph, format_table5, ntu_coverage


def _config(args: argparse.Namespace) -> GraphConfig:
    overrides = list(args.overrides) + read_overrides(args)
    if getattr(args, "engine", None) or getattr(args, "master", None):
        overrides.append(f"engine={args.engine or 'spark'}")  # a master URL means Spark
    if getattr(args, "master", None):
        overrides.append(f"spark_master={args.master}")
    base = GraphConfig.paper().model_dump() if getattr(args, "paper_filters", False) else None
    return GraphConfig.from_sources(args.config, overrides, base=base)


def cmd_build_graph(args: argparse.Namespace) -> int:
    config = _config(args)
    stats = build_graph(args.posts, args.out, config, progress=args.progress)
    posts = stats["posts"]
    print(
        f"posts: read {posts['read']:,}, accepted {posts['accepted']:,}, rejected {posts['rejected']:,}"
        + (
            f" (see {args.out}/rejected.jsonl)"
            if posts["rejected"] and config.read.quarantine
            else ""
        )
    )
    for path, why in posts["files_skipped"].items():
        print(f"skipped file {path}: {why}")
    print(f"nodes: {stats['nodes']['user']:,} users, {stats['nodes']['hashtag']:,} hashtags")
    print(
        "edges: "
        + ", ".join(f"{r} {n:,}" for r, n in stats["edges_per_relation"].items())
        + f" (total {stats['edges']:,})"
        if stats["edges"]
        else f"edges: none ({stats['before_filters']['engagements']:,} user-hashtag engagements "
        "before the filters; the log says why)"
    )
    rss = f"peak RSS {stats['peak_rss_mb']:.0f} MB" + (
        " (this process; Spark's JVM and workers apart)" if stats["engine"] == "spark" else ""
    )
    print(f"time {stats['seconds']['total']:.1f} s, {rss} -> {args.out}")
    return 0


def cmd_ntu_stats(args: argparse.Namespace) -> int:
    cov = ntu_coverage(args.posts, args.graph, _config(args), progress=args.progress)
    if args.json:
        json.dump(cov, sys.stdout, indent=2)
        print()
    else:
        print(format_table5(" ".join(args.posts), cov))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-graph",
        help="posts -> user-hashtag NTU graph (Parquet edges, vocabularies, stats.json)",
        description="Build the heterogeneous user-hashtag graph of the paper (§3.1) from posts. "
        "Config keys:\n" + GraphConfig.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_posts_args(p)
    p.add_argument("--out", required=True, help="output graph directory")
    p.add_argument(
        "--paper-filters",
        action="store_true",
        help="the paper's settings: 3 relations, users with 10-100 hashtags",
    )
    p.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        help="where the relational steps run (default duckdb; spark: pip install 'ntulm[spark]')",
    )
    p.add_argument(
        "--master",
        metavar="URL",
        help="Spark master for --engine spark: local[2], spark://host:7077, yarn, k8s://...",
    )
    add_config_args(p)
    p.set_defaults(func=cmd_build_graph)

    s = sub.add_parser(
        "ntu-stats",
        help="the paper's Table 5: NTU coverage of a post set against a graph",
        description="Unique NTUs, %% posts with NTUs, %% posts whose NTUs are in the graph (paper Table 5).",
    )
    add_posts_args(s)
    s.add_argument("--graph", required=True, help="graph directory from build-graph")
    s.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    add_config_args(s)
    s.set_defaults(func=cmd_ntu_stats)
