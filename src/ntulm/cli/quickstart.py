"""``ntulm quickstart``: every stage that exists, end to end, on a generated synthetic corpus."""

from __future__ import annotations

import argparse
from pathlib import Path

from ntulm.graph import GraphConfig, build_graph, format_table5, ntu_coverage
from ntulm.synthetic import write_corpus


def cmd_quickstart(args: argparse.Namespace) -> int:
    out = Path(args.out)
    posts = write_corpus(out / "posts.jsonl.gz", n_posts=args.posts, seed=args.seed)
    print(f"synthetic corpus (generated, not real data): {args.posts:,} posts -> {posts}")
    stats = build_graph([posts], out / "graph", GraphConfig(), progress=not args.quiet)
    print(
        f"graph: {stats['nodes']['user']:,} users, {stats['nodes']['hashtag']:,} hashtags, "
        + ", ".join(f"{r} {n:,}" for r, n in stats["edges_per_relation"].items())
        + f" -> {out / 'graph'}"
    )
    print(
        format_table5(
            "NTU coverage of the corpus against its graph (paper Table 5):",
            ntu_coverage([posts], out / "graph", progress=False),
        )
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart", help="run the pipeline end to end on a generated synthetic corpus"
    )
    p.add_argument(
        "--out", default="ntulm-quickstart", help="output directory (default: ./ntulm-quickstart)"
    )
    p.add_argument("--posts", type=int, default=3000, help="number of synthetic posts")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_quickstart)
