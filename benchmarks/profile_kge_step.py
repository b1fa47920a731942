"""Where the time of one KGE training step goes: torch.profiler self time by phase.

    flock /tmp/ntulm-heavy.lock nice -n 15 python benchmarks/profile_kge_step.py \
        --graph /work/cache/ira/graph --edges 40000 --threads 1 [--old REV] [key=value ...]

One warm-up batch, then one profiled batch of ``--edges`` edges; every aten op's self CPU time
is put in a phase (matmuls, element-wise loss and gradient passes, row gathers, gradient scatter,
masks of positive-equal candidates, Adagrad, sampling). ``--old REV`` profiles that commit's
trainer too, in the same process. Prints one JSON line, writes
benchmarks/results/profile_kge_step.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ntulm.artifacts import write_json
from ntulm.kge.config import KGEConfig
from ntulm.kge.data import load_graph, training_split
from ntulm.kge.train import KGETrainer

sys.path.insert(0, str(Path(__file__).parent))
from ab_kge_step import old_trainer_class  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "profile_kge_step.json"
PHASES = {
    "matmul": {"bmm", "baddbmm", "baddbmm_", "mm", "addmm", "addmm_", "matmul"},
    "gather rows": {"index_select"},
    "scatter gradients": {"index_add_", "scatter_add_"},
    "masks": {"sort", "searchsorted", "repeat_interleave", "_index_put_impl_", "cumsum"},
    "adagrad": {"linalg_vector_norm", "addcdiv_", "sqrt", "square_", "div_"},
    "sampling": {"randint", "random_", "randperm"},
}


def phase(op: str) -> str:
    op = op.removeprefix("aten::")
    return next((p for p, ops in PHASES.items() if op in ops), "element-wise")


def profile_step(trainer, train, weight, edges: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    batches = trainer._batches(train, gen)
    trainer.train_batch(train, weight, batches[0][:edges], gen)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        trainer.train_batch(train, weight, batches[1][:edges], gen)
        wall = time.perf_counter() - t0
    acc: collections.Counter = collections.Counter()
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            acc[phase(ev.key)] += ev.self_cpu_time_total
    total = sum(acc.values())
    return {
        "wall_s": wall,
        "profiled_ms": total / 1e3,
        "fraction": {k: v / total for k, v in acc.most_common()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graph", required=True)
    ap.add_argument("--edges", type=int, default=40000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--old", help="also profile the trainer of this git revision")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="KGEConfig overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = KGEConfig.from_sources(None, ["compute_dtype=float32", *args.overrides])
    graph = load_graph(args.graph, cfg)
    train, weight, _ = training_split(graph, cfg)
    num_nodes = {t: len(k) for t, k in graph.keys.items()}
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "threads": torch.get_num_threads(),
        "compute_dtype": cfg.compute_dtype,
        "edges": args.edges,
    }
    result["new"] = profile_step(
        KGETrainer(cfg, num_nodes, graph.relations), train, weight, args.edges
    )
    if args.old:
        with tempfile.TemporaryDirectory(prefix="kge_old_") as tmp:
            old = old_trainer_class(args.old, Path(tmp))(cfg, num_nodes, graph.relations)
            result["old"] = profile_step(old, train, weight, args.edges)
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k in ("new", "old", "threads")}))


if __name__ == "__main__":
    main()
