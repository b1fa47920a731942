"""Peak resident memory of ``ntulm run`` before and after the stage workers (``isolate_stages``),
side by side in one run, on a cut-down real-data preset (``benchmarks/paper_cpu_memory.yaml``, by
default with 3 fine-tuning seeds, so the stages repeat as in the 3-seed presets).

"before" runs the code of ``--ref`` (default ``main``, extracted with ``git archive``), "after" the
working tree's; same command, config, data, dtype and threads. Each run starts from an empty
output directory and is measured two ways:

- ``/usr/bin/time -v``'s "Maximum resident set size": the largest *single* process (for the
  isolated run, the larger of the main process and its biggest worker);
- the peak of the *summed* RSS of the whole process tree, sampled from ``/proc`` every 0.2 s
  (``procmem.py``): what the machine must hold at once, the figure the goal is about.

The two runs' ``results.json`` metrics must be identical.

    flock /tmp/ntulm-heavy.lock nice -n 15 python benchmarks/bench_pipeline_memory.py \
        [--config benchmarks/paper_cpu_memory.yaml] [--set finetune_per_seed=true ...] \
        [--ref HEAD --before-set isolate_stages=false]

Prints one JSON line and writes ``benchmarks/results/bench_pipeline_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_info  # noqa: E402
from procmem import run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "bench_pipeline_memory.json"
SEEDS = ["finetune_per_seed=true", "seeds=[1,2]"]


def old_source(ref: str, into: Path) -> Path:
    """``src/`` of git ``ref``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def max_rss_mb(time_v: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v)
    return round(int(m.group(1)) / 1024, 1) if m else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="benchmarks/paper_cpu_memory.yaml")
    ap.add_argument("--set", nargs="*", default=SEEDS, help="key=value overrides of both runs")
    ap.add_argument("--ref", default="main", help="git ref of the 'before' code")
    ap.add_argument(
        "--before-set",
        nargs="*",
        default=[],
        help="key=value overrides of the 'before' run only: with --ref HEAD and "
        "isolate_stages=false, the same code with and without the stage workers",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_memory_"))
    (tmp / "old").mkdir()
    sources = {"before": old_source(args.ref, tmp / "old"), "after": ROOT / "src"}
    rows, metrics = {}, {}
    for mode, src in sources.items():
        out = tmp / mode
        cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "ntulm", "-q", "run",
               "--config", args.config, "--out", str(out), *args.set,
               *(args.before_set if mode == "before" else [])]  # fmt: skip
        uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        env = {**os.environ, "PYTHONPATH": str(src)}
        done, wall, peak = run_measured(cmd, env=env, cwd=ROOT)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        res = json.loads((out / "results.json").read_text())
        metrics[mode] = [[r["variant"], r["task"], r["seed"], r["metrics"]] for r in res["runs"]]
        rows[mode] = {
            "uptime": uptime,
            "wall_s": round(wall, 1),
            "peak_tree_rss_mb": round(peak, 1),
            "time_v_max_rss_mb": max_rss_mb(done.stderr),
            "stages_ran": res["stages"]["ran"],
        }
    result = {
        "what": f"ntulm run --config {args.config} {' '.join(args.set)}; before = git {args.ref} "
        f"{' '.join(args.before_set) or '(one process)'}, after = this tree (isolate_stages: a "
        "worker per fine-tune and per model's encoding); train_dtype auto (bf16 autocast on a "
        "CPU with native bf16), embed_dtype bfloat16",
        "before_set": args.before_set,
        "command": " ".join(
            ["/usr/bin/time -v ntulm -q run --config", args.config, "--out DIR", *args.set]
        ),  # fmt: skip
        "torch_threads": "default (2 cores)",
        "machine": cpu_info(),
        "runs": rows,
        "peak_tree_rss_mb_before": rows["before"]["peak_tree_rss_mb"],
        "peak_tree_rss_mb_after": rows["after"]["peak_tree_rss_mb"],
        "time_v_max_rss_mb_before": rows["before"]["time_v_max_rss_mb"],
        "time_v_max_rss_mb_after": rows["after"]["time_v_max_rss_mb"],
        "wall_ratio_after": round(rows["after"]["wall_s"] / rows["before"]["wall_s"], 3),
        "same_metrics": metrics["before"] == metrics["after"],
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
