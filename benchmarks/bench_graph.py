"""Benchmark: ``ntulm build-graph`` over the whole IRA corpus (../shared/data/ira).

Side by side, in the same run:
- ``ntulm``: the real command (readers with the bad-input policy, NTU extraction rules, all
  relations, identity resolution), as a subprocess, wall time and peak RSS of its process tree;
- ``baseline``: the same command from the ``src/`` of git ``--baseline`` (default ``c85ed5e``,
  the fast reader before issue 12's reading work), unpacked with ``git archive``; the edges and
  the read counts of both runs must be identical (asserted);
- ``duckdb_regex``: what a user might write instead in pure DuckDB SQL: ``read_csv`` +
  ``regexp_extract_all`` for hashtags, authored edges only, no bad-input handling, no Unicode or
  URL rules. A lower bound on cost, not an equivalent;
- ``reference_equality``: every IRA file read in this process by the fast reader and by the
  Python reference (``reader=python``): the same posts table, counts and quarantine per file
  (the run fails after writing the JSON if any file differs).

The ``v1`` part (issue 12): a Twitter API v1.1 JSON Lines corpus of ``--v1-tweets`` synthetic
tweets (``ntulm.synthetic.v1_tweets``: full user objects, entities, extended tweets, retweets,
replies, quotes), generated into /tmp at benchmark time (kept there for reruns, never committed),
read by ``build-graph`` with this reader and the baseline's (``--v1-python``: also the Python
reader) side by side; edges asserted identical.

Prints one JSON line and writes ``benchmarks/results/bench_graph.json`` (a ``--v1-only`` run keeps
the IRA figures already there and replaces only the ``v1`` ones).
Usage: ``python benchmarks/bench_graph.py [--data ../shared/data/ira] [--baseline REF]
[--skip-baselines] [--skip-equality] [--v1-only | --skip-v1] [--v1-python] [--v1-tweets 500000]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from machine import cpu_info  # noqa: E402  (benchmarks/machine.py)

sys.path.insert(0, str(Path(__file__).parent))
from procmem import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UPTIME = ""


def baseline_src(ref: str, into: Path) -> Path:
    """The ``src/`` tree of git ``ref`` (the reader before this change), unpacked under ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_ntulm(data: Path, out: Path, *overrides: str, src: Path | None = None) -> dict:
    """``ntulm build-graph`` as a subprocess; ``src``: run that source tree instead (baseline)."""
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": str(src)}
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
    proc, wall, peak = run_measured(cmd, env=env)
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


def run_v1(n: int, baseline: Path | None, python_reader: bool) -> dict:
    """build-graph on the v1.1 corpus: this reader vs the baseline's and the Python reader, in
    the same run; edges asserted identical."""
    path = v1_corpus(n)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rel = "relations=[authored,co_mentioned,retweeted]"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs["fast"] = run_ntulm(path, Path(tmp) / "fast", rel)
        edges = pq.read_table(Path(tmp) / "fast" / "edges.parquet")
        others = {}
        if baseline is not None:
            others["baseline"] = (rel, baseline)
        if python_reader:
            others["python_reader"] = (rel, "reader=python")
        for key, (r, extra) in others.items():
            if isinstance(extra, Path):
                runs[key] = run_ntulm(path, Path(tmp) / key, r, src=extra)
            else:
                runs[key] = run_ntulm(path, Path(tmp) / key, r, extra)
            same = edges.equals(pq.read_table(Path(tmp) / key / "edges.parquet"))
            assert same, f"this v1.1 reader and {key} gave different edges"
            assert runs[key]["stats"]["posts"] == runs["fast"]["stats"]["posts"], key
    fast = runs["fast"]
    tweets = fast["stats"]["posts"]["read"]
    fast_read = fast["stats"]["seconds"]["read"]
    out = {
        "corpus": f"{path} ({path.stat().st_size / 1e6:.0f} MB, synthetic v1.1 JSON Lines)",
        "tweets": tweets,
        "accepted": fast["stats"]["posts"]["accepted"],
        "edges": edges.num_rows,
        "edges_identical": True,
        "v1_tweets_per_s": round(tweets / fast_read, 1),
        "fast": {"read_s": fast_read, "wall_s": fast["wall_s"], "peak_rss_mb": fast["peak_rss_mb"]},
    }
    for key, run in runs.items():
        if key == "fast":
            continue
        read = run["stats"]["seconds"]["read"]
        out[key] = {
            "read_s": read,
            "wall_s": run["wall_s"],
            "peak_rss_mb": run["peak_rss_mb"],
            "tweets_per_s": round(tweets / read, 1),
            "read_speedup": round(read / fast_read, 2),
            "wall_speedup": round(run["wall_s"] / fast["wall_s"], 2),
        }
    out["note"] = (
        "tweets/s = tweets / build-graph read stage seconds (stats.json); graph threads default "
        "(all cores: 2 reader processes for a file of 64 MB and more)"
    )
    out["uptime"] = uptime
    return out


def reference_equality(files: list[Path]) -> dict:
    """Each IRA file read in this process by the fast reader and the Python reference: the same
    posts table, counts and quarantine (asserted), and both read times."""
    from ntulm.posts.readers import PostReader

    out, seconds = {}, {"fast": 0.0, "python": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            got = {}
            for engine in ("fast", "python"):
                q = Path(tmp) / f"q-{engine}.jsonl"
                reader = PostReader(engine=engine, quarantine_path=q)
                t0 = time.perf_counter()
                table = pa.concat_tables(list(reader.iter_tables([f])))
                seconds[engine] += time.perf_counter() - t0
                got[engine] = (table, reader.report.to_json(), q.read_text() if q.exists() else "")
            (fast, fast_rep, fast_q), (ref, ref_rep, ref_q) = got["fast"], got["python"]
            same = fast.num_rows == ref.num_rows and fast.equals(ref)
            differ = [] if same else [
                c for c in ref.column_names
                if fast.num_rows != ref.num_rows or not fast.column(c).equals(ref.column(c))
            ]  # fmt: skip
            out[f.name] = {
                "posts": fast.num_rows,
                "rejected": fast_rep["rejected"],
                "equal": same and fast_rep == ref_rep and fast_q == ref_q,
                **({"columns_differ": differ} if differ else {}),
            }
    return {
        "files": out,
        "all_equal": all(v["equal"] for v in out.values()),
        "fast_read_s": round(seconds["fast"], 2),
        "python_read_s": round(seconds["python"], 2),
        "note": "in one process, one file at a time, each engine with its default threads",
    }


_CPU_CHILD = """
import sys, time
from ntulm.posts.readers import PostReader
reader = PostReader(engine=sys.argv[2])
t0 = time.process_time()
n = sum(t.num_rows for t in reader.iter_tables([sys.argv[1]], threads=1))
print(time.process_time() - t0, n)
"""


def cpu_ab(path: Path, srcs: dict[str, Path], rounds: int = 2) -> dict:
    """CPU seconds (``time.process_time`` in a fresh process, one thread, one process) of reading
    ``path`` with each source tree's fast reader, in ABBA order: a ratio that drifts little with
    the machine's load, unlike wall time."""
    order = list(srcs)
    cpu: dict[str, list[float]] = {k: [] for k in order}
    posts = {}
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            env = {**os.environ, "PYTHONPATH": str(srcs[key])}
            proc = subprocess.run(
                [sys.executable, "-c", _CPU_CHILD, str(path), "fast"],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            sec, n = proc.stdout.strip().splitlines()[-1].split()  # (DuckDB may print a bar)
            cpu[key].append(round(float(sec), 2))
            posts[key] = int(n)
    assert len(set(posts.values())) == 1, posts
    best = {k: min(v) for k, v in cpu.items()}
    first, *rest = order
    return {
        "file": str(path),
        "posts": posts[first],
        "cpu_s": cpu,
        **{f"cpu_ratio_{k}_over_{first}": round(best[k] / best[first], 2) for k in rest},
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ira")
    ap.add_argument(
        "--baseline",
        default="c85ed5e",
        help="git ref whose src/ is the reader compared against (default: the fast reader "
        "before issue 12's reading work); '' for none",
    )
    ap.add_argument("--skip-baselines", action="store_true", help="only the default ntulm run")
    ap.add_argument("--skip-equality", action="store_true", help="no per-file reference check")
    ap.add_argument("--v1-only", action="store_true", help="only the Twitter v1.1 part")
    ap.add_argument("--skip-v1", action="store_true", help="leave out the Twitter v1.1 part")
    ap.add_argument("--v1-python", action="store_true", help="also the Python reader on v1.1")
    ap.add_argument("--v1-tweets", type=int, default=500_000, help="size of the v1.1 corpus")
    ap.add_argument(
        "--cpu-ab",
        nargs="+",
        type=Path,
        default=None,
        help="only: CPU seconds of this reader vs the baseline's on these files (ABBA, one "
        "thread), added to the JSON under cpu_ab",
    )
    args = ap.parse_args()
    global UPTIME
    UPTIME = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = ROOT / "benchmarks" / "results" / "bench_graph.json"
    tmp_src = tempfile.TemporaryDirectory()
    base = None
    if args.baseline and not args.skip_baselines:
        base = baseline_src(args.baseline, Path(tmp_src.name))
    if args.cpu_ab:
        result = json.loads(out.read_text()) if out.exists() else {"benchmark": "bench_graph"}
        srcs = {"new": Path(os.environ.get("PYTHONPATH") or ROOT / "src"), "baseline": base}
        result["cpu_ab"] = {p.name: cpu_ab(p, srcs) for p in args.cpu_ab}
        result["cpu_ab_command"] = " ".join(sys.argv)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["cpu_ab"]))
        return
    if args.v1_only:
        result = json.loads(out.read_text()) if out.exists() else {"benchmark": "bench_graph"}
        result["v1"] = {
            **run_v1(args.v1_tweets, base, args.v1_python),
            "command": " ".join(sys.argv),
        }
        result["v1_tweets_per_s"] = result["v1"]["v1_tweets_per_s"]
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return
    files = sorted(args.data.glob("*.csv.gz"))
    if not files:
        raise SystemExit(f"{args.data}: no IRA CSV files (see ../shared/data/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        main_run = run_ntulm(args.data, Path(tmp) / "g")
        old = None if base is None else run_ntulm(args.data, Path(tmp) / "g0", src=base)
        if old is not None:
            new_edges = pq.read_table(Path(tmp) / "g" / "edges.parquet")
            old_edges = pq.read_table(Path(tmp) / "g0" / "edges.parquet")
            assert new_edges.equals(old_edges), "this reader and the baseline gave different edges"
            assert old["stats"]["posts"] == main_run["stats"]["posts"], "counts differ"
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
        "machine": cpu_info(),
    }
    if old is not None:
        result["baseline"] = {
            "ref": args.baseline,
            "wall_s": old["wall_s"],
            "read_s": old["stats"]["seconds"]["read"],
            "graph_sql_s": round(
                old["stats"]["seconds"]["total"] - old["stats"]["seconds"]["read"], 2
            ),
            "peak_rss_mb": old["peak_rss_mb"],
            "edges_identical": True,
        }
        result["speedup_vs_baseline"] = round(old["wall_s"] / main_run["wall_s"], 2)
        result["read_speedup_vs_baseline"] = round(
            old["stats"]["seconds"]["read"] / stats["seconds"]["read"], 2
        )
    if duck is not None:
        result["duckdb_regex"] = {**duck, "posts_per_s": round(duck["posts"] / duck["wall_s"], 1)}
        result["ratio_vs_duckdb_regex"] = round(
            result["posts_per_s"] / result["duckdb_regex"]["posts_per_s"], 3
        )
    if not args.skip_v1:
        result["v1"] = run_v1(args.v1_tweets, base, args.v1_python)
    elif out.exists() and "v1" in (prev := json.loads(out.read_text())):
        result["v1"] = prev["v1"]  # keep the v1.1 figures of an earlier --v1-only run
    if "v1" in result:
        result["v1_tweets_per_s"] = result["v1"]["v1_tweets_per_s"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")  # the timings, before the long check
    equality = None if args.skip_equality else reference_equality(files)
    if equality is not None:
        result["reference_equality"] = equality
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    if equality is not None and not equality["all_equal"]:
        raise SystemExit("the fast reader and the reference differ on some IRA file (see JSON)")


if __name__ == "__main__":
    main()
