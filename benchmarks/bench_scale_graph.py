"""Benchmark (issue 13): the graph on Spark against DuckDB, and ``ntulm embed`` over 1 and N
processes, on the IRA data, in one run each.

- ``graph``: ``ntulm build-graph`` with ``--engine duckdb`` and ``--engine spark --master
  local[2]`` on the same input; the artifacts must be equal (edges, vocabularies, stats apart from
  timings: asserted, ``spark_edges_equal``).
- ``embed``: ``ntulm embed`` of the first ``--embed-posts`` posts with one process and with
  ``--nproc 2``; the union of the parts must equal the single output (ids, overlap; embeddings to
  1e-5, float32).

Each command runs under ``/usr/bin/time -v`` (peak RSS of its largest process) while its whole
process tree is sampled (peak of the summed RSS). Merges its keys (``graph``, ``embed``,
``spark_edges_equal``) into ``benchmarks/results/scale.json`` and prints them as one JSON line.
Usage: ``python benchmarks/bench_scale_graph.py [--posts FILE_OR_DIR ...] [--model DIR]``
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from procmem import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = {"seconds", "peak_rss_mb", "engine", "spark_master"}


def measured(cmd: list[str]) -> dict:
    proc, wall, tree = run_measured(["/usr/bin/time", "-v", *cmd])
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    largest = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
    return {
        "command": " ".join(cmd[2:] if cmd[1:3] == ["-m", "ntulm.cli"] else cmd),
        "wall_s": round(wall, 1),
        "peak_rss_largest_process_mb": round(largest / 1024),
        "peak_rss_tree_mb": round(tree),
    }


def graph(posts: list[str], tmp: Path) -> tuple[dict, bool]:
    ntulm = [sys.executable, "-m", "ntulm.cli", "-q", "build-graph", "--posts", *posts]
    res = {
        "duckdb": measured([*ntulm, "--out", str(tmp / "duck")]),
        "spark_local2": measured(
            [*ntulm, "--out", str(tmp / "spark"), "--engine", "spark", "--master", "local[2]"]
        ),
    }
    res["files_equal"] = {
        f: pq.read_table(tmp / "duck" / f).equals(pq.read_table(tmp / "spark" / f))
        for f in ("edges.parquet", "nodes_user.parquet", "nodes_hashtag.parquet")
    }
    stats = [json.loads((tmp / d / "stats.json").read_text()) for d in ("duck", "spark")]
    same = [{k: v for k, v in s.items() if k not in RUN_KEYS} for s in stats]
    res["stats_differ_in"] = sorted(k for k in same[0] if same[0][k] != same[1].get(k))
    equal = all(res["files_equal"].values()) and same[0] == same[1]
    res["edges"], res["nodes"] = stats[0]["edges"], stats[0]["nodes"]
    res["posts"] = stats[0]["posts"]["accepted"]
    res["spark_over_duckdb_wall"] = round(
        res["spark_local2"]["wall_s"] / res["duckdb"]["wall_s"], 2
    )
    return res, equal


def embed(posts: list[str], model: str, n: int, tmp: Path) -> dict:
    ntulm = [sys.executable, "-m", "ntulm.cli", "-q", "embed", "--model", model]
    ntulm += ["--posts", *posts, "--limit", str(n), "--dtype", "float32"]
    res = {
        "posts": n,
        "dtype": "float32",
        "1proc": measured([*ntulm, "--out", str(tmp / "one.parquet")]),
        "2proc": measured([*ntulm, "--out", str(tmp / "two"), "--nproc", "2"]),
    }
    from ntulm.lm.shards import read_embeddings

    one = pq.read_table(tmp / "one.parquet").sort_by("id")
    two = read_embeddings(tmp / "two").sort_by("id")
    a, b = (np.asarray(t["embedding"].to_pylist(), dtype=np.float32) for t in (one, two))
    res["union_equal"] = bool(
        one["id"].equals(two["id"]) and one["overlap"].equals(two["overlap"])
    ) and bool(np.allclose(a, b, atol=1e-5))
    res["max_abs_diff"] = float(np.abs(a - b).max())
    res["torch_threads"] = {"1proc": "all cores (2)", "2proc": "1 per process"}
    res["speedup_2proc"] = round(res["1proc"]["wall_s"] / res["2proc"]["wall_s"], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--posts", nargs="+", default=["../shared/data/ira/IRAhandle_tweets_en_01.csv.gz"]
    )
    ap.add_argument("--model", default="/work/cache/bench-pipeline/paper/lm/ntulm_author")
    ap.add_argument("--embed-posts", type=int, default=2000)
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = ROOT / "benchmarks" / "results" / "scale.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        g, equal = graph(args.posts, Path(tmp))
        g["uptime"] = uptime
        g["input"] = args.posts
        results["graph"], results["spark_edges_equal"] = g, equal
        if not args.skip_embed:
            e = embed(args.posts, args.model, args.embed_posts, Path(tmp))
            e["uptime"] = uptime
            e["model"] = args.model
            results["embed"] = e
    out.write_text(json.dumps(results, indent=2) + "\n")
    mine = {k: results[k] for k in ("graph", "embed", "spark_edges_equal") if k in results}
    print(json.dumps(mine))
    if not equal:
        raise SystemExit("the Spark graph differs from the DuckDB graph")


if __name__ == "__main__":
    main()
