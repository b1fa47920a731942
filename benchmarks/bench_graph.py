"""Benchmark: ``ntulm build-graph`` over the whole IRA corpus (../shared/data/ira).

Side by side, in the same run:
- ``ntulm``: the real command (readers with the bad-input policy, NTU extraction rules, all
  relations, identity resolution), as a subprocess, wall time and peak RSS of its process tree;
- ``python_reader``: the same with the Python reference readers (``reader=python``); the edges of
  both runs must be identical (asserted);
- ``duckdb_regex``: what a user might write instead in pure DuckDB SQL: ``read_csv`` +
  ``regexp_extract_all`` for hashtags, authored edges only, no bad-input handling, no Unicode or
  URL rules. A lower bound on cost, not an equivalent.

Prints one JSON line and writes ``benchmarks/results/bench_graph.json``.
Usage: ``python benchmarks/bench_graph.py [--data ../shared/data/ira] [--skip-baselines]``
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ira")
    ap.add_argument("--skip-baselines", action="store_true", help="only the default ntulm run")
    args = ap.parse_args()
    global UPTIME
    UPTIME = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
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
    out = ROOT / "benchmarks" / "results" / "bench_graph.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
