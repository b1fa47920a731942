"""Benchmark: the paired bootstrap of the report (``ntulm.evaluate.significance``).

Side by side, in the same run, on one macro-F1 task the size of the CPU preset's IRA account
category test split (``--posts`` test posts, ``--classes`` classes, 3 seed pairings, 1000
replicates):
- ``ntulm``: :func:`paired_bootstrap`, macro-F1 from bootstrap-weighted confusion counts, all
  replicates at once;
- ``sklearn_loop``: what a user would write: per replicate and pairing, ``f1_score`` on the
  resampled posts of both models, with the same random draws (so both intervals must agree).

Prints one JSON line and writes ``benchmarks/results/bench_bootstrap.json``.
Usage: ``python benchmarks/bench_bootstrap.py [--posts 3000] [--classes 8] [--boot 1000]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from ntulm.artifacts import write_json
from ntulm.evaluate.significance import paired_bootstrap

ROOT = Path(__file__).resolve().parents[1]


def sklearn_loop(pairs: list, n_boot: int, seed: int) -> tuple[float, float]:
    """The same replicates as ``paired_bootstrap`` (same rng stream), one f1_score at a time."""
    n, r = len(pairs[0][0]["y"]), len(pairs)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))  # one chunk: n_boot * n <= 4M cells
    pick = rng.integers(0, r, size=(n_boot, r))
    diffs = np.zeros((r, n_boot))
    for k, (m, b) in enumerate(pairs):
        y, pm, pb = (np.asarray(a) for a in (m["y"], m["pred"], b["pred"]))
        for i in range(n_boot):
            j = idx[i]
            diffs[k, i] = f1_score(y[j], pm[j], average="macro") - f1_score(
                y[j], pb[j], average="macro"
            )
    reps = np.take_along_axis(diffs.T, pick, axis=1).mean(1)
    low, high = np.quantile(reps, [0.025, 0.975])
    return float(low), float(high)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()
    if args.boot * args.posts > 4_000_000:
        raise SystemExit("--boot x --posts must stay <= 4M (one chunk, so both draw alike)")
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.posts)

    def preds(acc: float) -> list[int]:
        right = rng.random(args.posts) < acc
        return np.where(right, y, rng.integers(0, args.classes, args.posts)).tolist()

    pairs = [
        ({"metric": "macro_f1", "y": y.tolist(), "pred": preds(0.58)},
         {"metric": "macro_f1", "y": y.tolist(), "pred": preds(0.55)})
        for _ in range(3)
    ]  # fmt: skip
    t = time.perf_counter()
    ci = paired_bootstrap([pairs], n_boot=args.boot, seed=0)
    ntulm_s = time.perf_counter() - t
    t = time.perf_counter()
    low, high = sklearn_loop(pairs, args.boot, seed=0)
    loop_s = time.perf_counter() - t
    res = {
        "benchmark": "bootstrap",
        "posts": args.posts,
        "classes": args.classes,
        "pairings": 3,
        "replicates": args.boot,
        "ntulm_s": round(ntulm_s, 3),
        "sklearn_loop_s": round(loop_s, 2),
        "speedup": round(loop_s / ntulm_s, 1),
        "interval_ntulm": [round(ci.low, 6), round(ci.high, 6)],
        "interval_sklearn_loop": [round(low, 6), round(high, 6)],
        "same_interval": bool(np.allclose([ci.low, ci.high], [low, high], atol=1e-12)),
        "dtype": "float64",
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    write_json(ROOT / "benchmarks" / "results" / "bench_bootstrap.json", res)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
