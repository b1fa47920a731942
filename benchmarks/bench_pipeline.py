"""Wall time and peak RSS of the one-command pipeline, each command under ``/usr/bin/time -v``:

- ``ntulm quickstart`` (synthetic corpus) with its default workload, and side by side in the same
  run the previous default workload (2,000 posts, 5 variants, 40 fine-tuning steps), which is
  what a user got before (``--no-old-workload`` skips it);
- with ``--paper`` (off by default: about 40 minutes on 2 cores), ``ntulm run --config
  benchmarks/paper_cpu.yaml`` on the real data.

Wrap it in the heavy-run lock on a shared machine. Prints one JSON line and updates
``benchmarks/results/bench_pipeline.json`` (keys of parts not run are kept)::

    flock /tmp/ntulm-heavy.lock python benchmarks/bench_pipeline.py [--paper] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_info  # noqa: E402  (benchmarks/machine.py)
from procmem import run_measured  # noqa: E402  (benchmarks/procmem.py)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "bench_pipeline.json"

# The quickstart's previous default workload (before this change), as overrides of today's
# quickstart; it runs on today's code (posts table, OMP_WAIT_POLICY=PASSIVE).
OLD_WORKLOAD = [
    "--posts", "2000",
    "lm_posts=1500",
    "kge.num_epochs=10", "kge.dimension=200",
    "lm.eval_max_posts=5000",
    "eval.embed_dtype=float32", "eval.embed_batch_size=64", "eval.mlp.num_threads=0",
    "lm.max_steps=40", "lm.batch_size=32", "lm.head_warmup_steps=30", "lm.max_length=48",
    "eval.mlp.max_epochs=50",
    "eval.tasks=[{type: classification, name: community, label: community, split_by: author},"
    " {type: classification, name: stance, label: stance}, {type: hashtag, top_k: 40, per_class: 15},"
    " {type: retrieval, name: community_map, label: community, max_test: 300}]",
    "variants=[{name: BERT, use_ntu: false}, {name: NTULM author, ntu_types: [author]},"
    " {name: NTULM hashtag, ntu_types: [hashtag]}, {name: NTULM author+hashtag},"
    " {name: BERT-post-concat, post_concat_of: BERT}]",
    "seeds=[1,2]",
]  # fmt: skip


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def timed(cmd: list[str]) -> dict:
    """Run ``cmd`` under /usr/bin/time -v; wall seconds, peak RSS (MB), the load before and after.

    ``ntulm run`` trains and encodes in worker processes (``isolate_stages``), and /usr/bin/time
    reports only the largest single process, so ``peak_rss_mb`` is the peak of the whole process
    tree (summed over the processes alive at one 0.2 s sample, ``benchmarks/procmem.py``; never
    below the largest single process, which sampling can miss by a few MB) and
    ``time_v_max_rss_mb`` the largest single process.
    """
    load = uptime()
    each: dict[int, float] = {}
    proc, _, tree_peak = run_measured(["/usr/bin/time", "-v", *cmd], cwd=ROOT, per_process=each)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    largest = int(rss.group(1)) / 1024  # type: ignore[union-attr]
    parts = [float(x) for x in wall.group(1).split(":")]  # type: ignore[union-attr]
    seconds = sum(x * 60**i for i, x in enumerate(reversed(parts)))
    return {
        "wall_s": round(seconds, 1),
        "peak_rss_mb": round(max(tree_peak, largest), 1),
        "time_v_max_rss_mb": round(largest, 1),
        # each process's own peak, in the order they started (the run, then its stage workers)
        "process_peaks_mb": [round(x, 1) for x in each.values() if x >= 50],
        "command": " ".join(cmd),
        "uptime": load,
        "uptime_after": uptime(),
        "stdout_tail": proc.stdout[-1500:],
    }


def effect(run_dir: Path) -> dict:
    """Headline macro-F1 of the planted community task per variant (mean over seeds)."""
    res = json.loads((run_dir / "results.json").read_text())
    by: dict[str, list[float]] = {}
    for r in res["runs"]:
        if r["task"] == "community":
            by.setdefault(r["variant"], []).append(r["metrics"]["macro_f1"])
    return {v: round(sum(x) / len(x), 4) for v, x in by.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paper", action="store_true", help="also the paper CPU preset (~40 min)")
    ap.add_argument("--no-quickstart", action="store_true", help="skip the quickstart part")
    ap.add_argument("--no-old-workload", action="store_true", help="skip the previous workload")
    ap.add_argument("--work", default="/tmp/ntulm-bench-pipeline", help="scratch directory")
    args = ap.parse_args()
    work = Path(args.work)
    ntulm = [sys.executable, "-m", "ntulm"]
    out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    out.update(
        torch_threads=int(
            subprocess.run(
                [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        ),  # fmt: skip
        cores=os.cpu_count(),
        embed_dtype_quickstart="bfloat16 (previous workload: float32)",
    )
    if not args.no_quickstart:
        shutil.rmtree(work / "qs", ignore_errors=True)
        qs = timed([*ntulm, "quickstart", "--out", str(work / "qs"), "-q"])
        out.update(
            quickstart_wall_s=qs["wall_s"],
            quickstart_peak_rss_mb=qs["peak_rss_mb"],
            quickstart_command=qs["command"],
            quickstart_uptime=qs["uptime"],
            quickstart_community_macro_f1=effect(work / "qs" / "run"),
            quickstart_machine=cpu_info(),
        )
        if not args.no_old_workload:
            shutil.rmtree(work / "qs_old", ignore_errors=True)
            old = timed([*ntulm, "quickstart", "--out", str(work / "qs_old"), "-q", *OLD_WORKLOAD])
            out.update(
                quickstart_old_workload_wall_s=old["wall_s"],
                quickstart_old_workload_peak_rss_mb=old["peak_rss_mb"],
                quickstart_old_workload_command=old["command"],
                quickstart_old_workload_uptime=old["uptime"],
                quickstart_speedup=round(old["wall_s"] / qs["wall_s"], 2),
            )
    if args.paper:
        shutil.rmtree(work / "paper", ignore_errors=True)
        cfg = "benchmarks/paper_cpu.yaml"
        paper = timed([*ntulm, "run", "--config", cfg, "--out", str(work / "paper"), "-q"])
        out.update(
            wall_s=paper["wall_s"],
            peak_rss_mb=paper["peak_rss_mb"],
            time_v_max_rss_mb=paper["time_v_max_rss_mb"],
            process_peaks_mb=paper["process_peaks_mb"],
            command=paper["command"],
            uptime=paper["uptime"],
            uptime_after=paper["uptime_after"],
            commit=subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip(),
            paper_machine=cpu_info(),
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
