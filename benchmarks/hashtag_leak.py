"""How much of the removed hashtag leaks back through the graph in the hashtag task.

Builds the hashtag task on a corpus (as ``ntulm run`` does), then the graph twice: with
``exclusion: posts`` (the validation and test posts give no edges, the paper's protocol) and with
``exclusion: strict`` (also no edge between a test post's author and its removed hashtag). Counts
the test posts whose author still has an edge (any relation) to the hashtag removed from it:
with such an edge, the author's NTU vector can point at the answer.

Prints one JSON line and writes ``benchmarks/results/hashtag_leak.json``.
Usage: ``python benchmarks/hashtag_leak.py --posts ../shared/data/ira/IRAhandle_tweets_en_01.csv.gz``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from ntulm.artifacts import write_json
from ntulm.evaluate import hashtag_task
from ntulm.graph import GraphConfig, build_graph
from ntulm.graph.build import edge_exclusion_lines
from ntulm.posts import PostReader

ROOT = Path(__file__).resolve().parents[1]


def edge_pairs(graph: Path) -> set[tuple[str, str]]:
    users = pq.read_table(graph / "nodes_user.parquet").column("key").to_pylist()
    tags = pq.read_table(graph / "nodes_hashtag.parquet").column("key").to_pylist()
    e = pq.read_table(graph / "edges.parquet", columns=["lhs", "rhs"]).to_pydict()
    return {(users[u], tags[h]) for u, h in zip(e["lhs"], e["rhs"], strict=True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", nargs="+", required=True)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--relations", nargs="+", default=["authored", "co_mentioned", "retweeted"])
    args = ap.parse_args()
    t0 = time.perf_counter()
    posts = [p for p, _ in PostReader().iter_posts(args.posts)]
    res: dict = {"corpus": args.posts, "n_posts": len(posts), "relations": args.relations}
    with tempfile.TemporaryDirectory() as tmp:
        for exclusion in ("posts", "strict"):
            task = hashtag_task(
                posts, args.top_k, args.per_class, seed=13, test_frac=0.1, exclusion=exclusion
            )
            ids, pairs = Path(tmp) / f"{exclusion}.txt", Path(tmp) / f"{exclusion}.jsonl"
            ids.write_text("".join(f"{i}\n" for i in task.exclude_from_graph))
            pairs.write_text(edge_exclusion_lines(task.exclude_edges))
            cfg = GraphConfig(
                relations=args.relations,
                exclude_posts=str(ids),
                exclude_edges=str(pairs) if task.exclude_edges else None,
                threads=2,
            )
            build_graph(args.posts, Path(tmp) / exclusion, cfg, progress=False)
            edges = edge_pairs(Path(tmp) / exclusion)
            authored = [p for p in task.test if p.author is not None]
            leaks = sum((p.author.key, p.labels["hashtag"]) in edges for p in authored)
            res[exclusion] = {
                "classes": len(task.classes),
                "test_posts": len(task.test),
                "test_posts_with_author": len(authored),
                "excluded_posts": len(task.exclude_from_graph),
                "excluded_pairs": len(task.exclude_edges),
                "test_author_keeps_edge_to_removed_hashtag": leaks,
                "share": round(leaks / max(len(authored), 1), 4),
            }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(ROOT / "benchmarks" / "results" / "hashtag_leak.json", res)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
