"""Paired bootstrap intervals of every variant of a finished ``ntulm run`` against any variant
chosen as the baseline (the report's are against ``config.baseline``, usually BERT), from the
per-post outcomes the run saved in ``predictions.parquet``; the same resampling as the report
(``ntulm.pipeline.report.significance``, controls included).

    python benchmarks/compare_variants.py RUN_DIR --baseline BERT-post-concat [--out FILE.json]

Issue 11 asks whether the recommended embedding is at least as good as BERT-post-concat (the
interval of the difference not below 0): this answers it without re-running anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ntulm.pipeline.report import significance


def load_runs(run_dir: Path) -> tuple[dict, list[dict]]:
    results = json.loads((run_dir / "results.json").read_text())
    preds = pq.read_table(run_dir / "predictions.parquet").to_pylist()
    by_key = {(p["variant"], p["task"], p["seed"], p["finetune_seed"]): p for p in preds}
    runs = []
    for r in results["runs"]:
        p = by_key.get((r["variant"], r["task"], r.get("seed"), r.get("finetune_seed")))
        if p is None:
            continue
        rec = {"metric": p["metric"]}
        for k in ("y", "pred", "score"):
            if p[k] is not None:
                rec[k] = np.asarray(p[k], dtype=np.float64 if k == "score" else np.int64)
        runs.append({**r, "per_post": rec})
    return results, runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", help="an `ntulm run` output directory")
    ap.add_argument("--baseline", required=True, help="variant name to compare against")
    ap.add_argument("--out", help="write the intervals here as JSON")
    args = ap.parse_args()
    missing = [
        f for f in ("results.json", "predictions.parquet") if not (Path(args.run) / f).exists()
    ]
    if missing:  # a committed results folder keeps results.json only: give the run's --out
        print(
            f"{args.run}: no {' or '.join(missing)} (an `ntulm run` --out directory)",
            file=sys.stderr,
        )
        return 2
    results, runs = load_runs(Path(args.run))
    names = [v["name"] for v in results["config"]["variants"]]
    if args.baseline not in names:
        print(
            f"--baseline {args.baseline!r} is not a variant ({', '.join(names)})", file=sys.stderr
        )
        return 2
    out = significance({**results, "runs": runs}, args.baseline)
    for group in ("tasks", "families"):
        for name, row in out[group].items():
            for v, c in row.items():
                print(
                    f"{name[:28]:28s} {v[:36]:36s} {c['diff']:+.4f} "
                    f"[{c['low']:+.4f}, {c['high']:+.4f}] {c['mark']}"
                )
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
