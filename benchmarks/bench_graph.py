"""Benchmark: ``ntulm build-graph`` over the whole IRA corpus (../shared/data/ira).

Side by side, in the same run:
- ``ntulm``: the real command (readers with the bad-input policy, NTU extraction rules, all
  relations, identity resolution), as a subprocess, wall time and peak RSS of its process tree;
- ``python_reader``: the same with the Python reference readers (``reader=python``); the edges of
  both runs must be identical (asserted);
- ``duckdb_regex``: what a user might write instead in pure DuckDB SQL: ``read_csv`` +
  ``regexp_extract_all`` for hashtags, authored edges only, no bad-input handling, no Unicode or
  URL rules. A lower bound on cost, not an equivalent.

The ``v1`` part (issue 12): a Twitter API v1.1 JSON Lines corpus of ``--v1-tweets`` synthetic
tweets (``ntulm.synthetic.v1_tweets``: full user objects, entities, extended tweets, retweets,
replies, quotes), generated into /tmp at benchmark time (kept there for reruns, never committed),
read by ``build-graph`` with the fast and the Python reader side by side; edges asserted identical.

Prints one JSON line and writes ``benchmarks/results/bench_graph.json`` (a ``--v1-only`` run keeps
the IRA figures already there and replaces only the ``v1`` ones).
Usage: ``python benchmarks/bench_graph.py [--data ../shared/data/ira] [--skip-baselines]
[--v1-only | --skip-v1] [--v1-tweets 500000]``
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from procmem import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UPTIME = ""


def run_ntulm(data: Path, out: Path, *overrides: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "ntulm.cli",
        "-q",
        "build-graph",
        "--posts",
        str(data),
        "--out",
        str(out),
        *overrides,
    ]
    proc, wall, peak = run_measured(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"build-graph failed: {proc.stderr.strip()}")
    stats = json.loads((out / "stats.json").read_text())
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak, 1), "stats": stats}


def run_duckdb_regex(data: Path) -> dict:
    t0 = time.perf_counter()
    con = duckdb.connect()
    n_posts, n_edges = con.execute(
        f"""WITH p AS (SELECT author, regexp_extract_all(lower(content), '#(\\w+)', 1) AS tags
                       FROM read_csv('{data}/*.csv.gz', all_varchar=true)),
             e AS (SELECT author, unnest(tags) AS tag FROM p)
        SELECT (SELECT count(*) FROM p), (SELECT count(*) FROM (SELECT DISTINCT author, tag FROM e))"""
    ).fetchone()
    return {
        "wall_s": round(time.perf_counter() - t0, 2),
        "posts": n_posts,
        "authored_edges": n_edges,
    }


def v1_corpus(n: int) -> Path:
    """The v1.1 corpus of ``n`` tweets under /tmp (generated once, reused by later runs)."""
    from ntulm.synthetic import write_v1_corpus

    path = Path(tempfile.gettempdir()) / "ntulm_bench_v1" / f"tweets_{n}.jsonl"
    if not path.exists():
        t0 = time.perf_counter()
        write_v1_corpus(path, n_posts=n, n_communities=8, users_per_community=2000, seed=12)
        print(f"generated {path} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return path


def run_v1(n: int) -> dict:
    """build-graph on the v1.1 corpus: fast reader vs Python reader, in the same run."""
    path = v1_corpus(n)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rel = "relations=[authored,co_mentioned,retweeted]"
    with tempfile.TemporaryDirectory() as tmp:
        fast = run_ntulm(path, Path(tmp) / "fast", rel)
        ref = run_ntulm(path, Path(tmp) / "python", rel, "reader=python")
        edges = pq.read_table(Path(tmp) / "fast" / "edges.parquet")
        same = edges.equals(pq.read_table(Path(tmp) / "python" / "edges.parquet"))
        assert same, "fast and Python v1.1 readers gave different edges"
    tweets = fast["stats"]["posts"]["read"]
    assert (
        tweets == ref["stats"]["posts"]["read"] and fast["stats"]["posts"] == ref["stats"]["posts"]
    )
    fast_read, ref_read = fast["stats"]["seconds"]["read"], ref["stats"]["seconds"]["read"]
    return {
        "corpus": f"{path} ({path.stat().st_size / 1e6:.0f} MB, synthetic v1.1 JSON Lines)",
        "tweets": tweets,
        "accepted": fast["stats"]["posts"]["accepted"],
        "edges": edges.num_rows,
        "edges_identical": same,
        "v1_tweets_per_s": round(tweets / fast_read, 1),
        "python_reader_tweets_per_s": round(tweets / ref_read, 1),
        "read_speedup_vs_python_reader": round(ref_read / fast_read, 2),
        "fast": {"read_s": fast_read, "wall_s": fast["wall_s"], "peak_rss_mb": fast["peak_rss_mb"]},
        "python_reader": {
            "read_s": ref_read,
            "wall_s": ref["wall_s"],
            "peak_rss_mb": ref["peak_rss_mb"],
        },  # fmt: skip
        "wall_speedup_vs_python_reader": round(ref["wall_s"] / fast["wall_s"], 2),
        "note": "tweets/s = tweets / build-graph read stage seconds (stats.json), 2 reader "
        "processes for the fast path (threads default: all cores), 1 for the Python reader",
        "uptime": uptime,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ira")
    ap.add_argument("--skip-baselines", action="store_true", help="only the default ntulm run")
    ap.add_argument("--v1-only", action="store_true", help="only the Twitter v1.1 part")
    ap.add_argument("--skip-v1", action="store_true", help="leave out the Twitter v1.1 part")
    ap.add_argument("--v1-tweets", type=int, default=500_000, help="size of the v1.1 corpus")
    args = ap.parse_args()
    global UPTIME
    UPTIME = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = ROOT / "benchmarks" / "results" / "bench_graph.json"
    if args.v1_only:
        result = json.loads(out.read_text()) if out.exists() else {"benchmark": "bench_graph"}
        result["v1"] = {**run_v1(args.v1_tweets), "command": " ".join(sys.argv)}
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return
    if not any(args.data.glob("*.csv.gz")):
        raise SystemExit(f"{args.data}: no IRA CSV files (see ../shared/data/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        main_run = run_ntulm(args.data, Path(tmp) / "g")
        one = (
            None if args.skip_baselines else run_ntulm(args.data, Path(tmp) / "g1", "reader=python")
        )
        if one is not None:
            fast_edges = pq.read_table(Path(tmp) / "g" / "edges.parquet")
            ref_edges = pq.read_table(Path(tmp) / "g1" / "edges.parquet")
            assert fast_edges.equals(ref_edges), "fast and Python readers gave different edges"
    duck = None if args.skip_baselines else run_duckdb_regex(args.data)
    stats = main_run["stats"]
    posts = stats["posts"]["read"]
    result = {
        "benchmark": "bench_graph",
        "posts": posts,
        "accepted": stats["posts"]["accepted"],
        "rejected": stats["posts"]["rejected"],
        "wall_s": main_run["wall_s"],
        "posts_per_s": round(posts / main_run["wall_s"], 1),
        "peak_rss_mb": main_run["peak_rss_mb"],
        "nodes": stats["nodes"],
        "edges_per_relation": stats["edges_per_relation"],
        "read_s": stats["seconds"]["read"],
        "graph_sql_s": round(stats["seconds"]["total"] - stats["seconds"]["read"], 2),
        "command": " ".join(sys.argv),
        "uptime": UPTIME,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    if one is not None:
        result["python_reader"] = {
            "wall_s": one["wall_s"],
            "read_s": one["stats"]["seconds"]["read"],
            "posts_per_s": round(posts / one["wall_s"], 1),
            "peak_rss_mb": one["peak_rss_mb"],
            "edges_identical": True,
        }
        result["speedup_vs_python_reader"] = round(one["wall_s"] / main_run["wall_s"], 2)
        result["read_speedup_vs_python_reader"] = round(
            one["stats"]["seconds"]["read"] / stats["seconds"]["read"], 2
        )
    if duck is not None:
        result["duckdb_regex"] = {**duck, "posts_per_s": round(duck["posts"] / duck["wall_s"], 1)}
        result["ratio_vs_duckdb_regex"] = round(
            result["posts_per_s"] / result["duckdb_regex"]["posts_per_s"], 3
        )
    if not args.skip_v1:
        result["v1"] = run_v1(args.v1_tweets)
    elif out.exists() and "v1" in (old := json.loads(out.read_text())):
        result["v1"] = old["v1"]  # keep the v1.1 figures of an earlier --v1-only run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
