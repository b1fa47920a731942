"""A/B of the KGE training step: this checkout's trainer vs the trainer of an older commit.

    flock /tmp/ntulm-heavy.lock nice -n 15 python benchmarks/ab_kge_step.py \
        --graph /work/cache/ira/graph --old e44839d --edges 20000 --rounds 8 --threads 1 \
        [key=value ...]

In one process: both trainers (the old one loaded from ``git show OLD:src/ntulm/kge/...``) start
from the same tables; one batch of ``--edges`` edges each from the same negatives gives the
largest table difference (the maths must agree up to float rounding); then ``--rounds`` rounds
alternate old / new on the same batches and the ratio of their median (and best) batch times is
reported, with dtype, threads and ``uptime``. On a shared machine use ratios from one run only.
Prints one JSON line and writes benchmarks/results/ab_kge_step.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ntulm.artifacts import write_json
from ntulm.kge.config import KGEConfig
from ntulm.kge.data import load_graph, training_split
from ntulm.kge.train import KGETrainer

RESULTS = Path(__file__).parent / "results" / "ab_kge_step.json"
ROOT = Path(__file__).resolve().parents[1]


def old_trainer_class(rev: str, tmp: Path) -> type:
    """``KGETrainer`` of commit ``rev``, importing that commit's ``kge/model.py``."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    (tmp / "kge_old_model.py").write_text(show("src/ntulm/kge/model.py"))
    train_src = show("src/ntulm/kge/train.py").replace(
        "ntulm.kge.model import", "kge_old_model import"
    )
    (tmp / "kge_old_train.py").write_text(train_src)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("kge_old_train").KGETrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", required=True)
    ap.add_argument("--old", required=True, help="git revision of the old trainer")
    ap.add_argument("--edges", type=int, default=20000, help="edges per timed batch")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="KGEConfig overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = KGEConfig.from_sources(None, ["compute_dtype=float32", *args.overrides])
    graph = load_graph(args.graph, cfg)
    train, weight, _ = training_split(graph, cfg)
    num_nodes = {t: len(k) for t, k in graph.keys.items()}
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="kge_old_") as tmp:
        old_cls = old_trainer_class(args.old, Path(tmp))
        trainers = {
            "old": old_cls(cfg, num_nodes, graph.relations),
            "new": KGETrainer(cfg, num_nodes, graph.relations),
        }
        batches = trainers["new"]._batches(train, torch.Generator().manual_seed(0))

        def step(name: str, k: int, seed: int) -> tuple[float, float]:
            b = batches[k % len(batches)][: args.edges]
            t0 = time.perf_counter()
            loss = trainers[name].train_batch(train, weight, b, torch.Generator().manual_seed(seed))
            return time.perf_counter() - t0, loss

        # Same start, same batch, same draws: the tables must agree up to rounding.
        losses = {name: step(name, 0, 1)[1] for name in trainers}
        diff = max(
            float((trainers["new"].tables[t].weight - trainers["old"].tables[t].weight).abs().max())
            for t in num_nodes
        )
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for r in range(args.rounds):
            order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
            for name in order:
                times[name].append(step(name, r + 1, 100 + r)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "uptime_before": uptime,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "threads": torch.get_num_threads(),
        "compute_dtype": str(trainers["new"].dtype).removeprefix("torch."),
        "old": args.old,
        "edges_per_batch": args.edges,
        "rounds": args.rounds,
        "max_table_diff_after_one_batch": diff,
        "loss_old": losses["old"],
        "loss_new": losses["new"],
        "seconds": times,
        "speedup_median": med["old"] / med["new"],
        "speedup_best": min(times["old"]) / min(times["new"]),
        "edges_per_s_median": {k: args.edges / v for k, v in med.items()},
    }
    write_json(args.out, result)
    keys = ("speedup_median", "speedup_best", "max_table_diff_after_one_batch", "threads")
    print(json.dumps({k: result[k] for k in (*keys, "compute_dtype", "edges_per_s_median")}))


if __name__ == "__main__":
    main()
