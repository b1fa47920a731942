"""Resident memory of MLM fine-tuning under the heap settings ``ntulm.memory`` can apply, side by
side in one run: without and with giving freed heap pages back to the OS (``trim``: glibc
``malloc_trim(0)`` every 50 steps), and with glibc's allocator tuned as well (``tuned``: a fixed
mmap threshold and oneDNN's kernel cache capped: ``ntulm finetune --lean-memory``,
``ntulm.memory.tune_allocator``).

Same command, data, seed, steps, dtype (the default ``train_dtype: auto``: bfloat16 autocast on
this CPU) and threads; only ``--lean-memory`` and the environment variables differ
(``NTULM_MALLOC_TRIM``, and glibc's for the single settings). Peak RSS of the process tree is sampled
from ``/proc`` every 0.2 s (``benchmarks/procmem.py``); the two runs alternate ``--repeats`` times.
The fine-tuned weights must be identical (trimming changes where memory lives, not the maths).

    flock /tmp/ntulm-heavy.lock python benchmarks/bench_memory.py \
        [--posts ../shared/data/ira/IRAhandle_tweets_en_01.csv.gz] [--steps 300]

Prints one JSON line and writes ``benchmarks/results/bench_memory.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ntulm.posts import PostReader  # noqa: E402
from procmem import run_measured  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_memory.json"
_TRIM = {"NTULM_MALLOC_TRIM": "1", "NTULM_MALLOC_TUNE": "0"}
MODES: dict[str, tuple[dict[str, str], list[str]]] = {  # name: (environment, extra arguments)
    "no_trim": ({"NTULM_MALLOC_TRIM": "0", "NTULM_MALLOC_TUNE": "0"}, []),
    "trim": (_TRIM, []),
    "tuned": ({"NTULM_MALLOC_TRIM": "1", "NTULM_MALLOC_TUNE": "1"}, ["--lean-memory"]),
    # glibc's own variables, read when a process starts (part of what ``tuned`` sets, alone)
    "arena2": ({**_TRIM, "MALLOC_ARENA_MAX": "2"}, []),
    **{
        f"mmap{label}": ({**_TRIM, "MALLOC_MMAP_THRESHOLD_": str(n)}, [])
        for label, n in (("128k", 128 << 10), ("1m", 1 << 20), ("4m", 4 << 20), ("16m", 16 << 20))
    },
}


def write_sample(src: str, n: int, out: Path) -> int:
    """The first ``n`` posts of ``src`` as JSON Lines (our schema)."""
    k = 0
    with out.open("w") as f:
        for post, _ in PostReader().iter_posts([src]):
            f.write(json.dumps(post.to_json()) + "\n")
            k += 1
            if k == n:
                break
    return k


def weights_digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((model_dir / "model").glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--posts", default="../shared/data/ira/IRAhandle_tweets_en_01.csv.gz")
    ap.add_argument("--n-posts", type=int, default=12_000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--modes", default="no_trim,trim,tuned", help="comma-separated, of " + ",".join(MODES)
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    sample = tmp / "posts.jsonl"
    n = write_sample(args.posts, args.n_posts, sample)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    modes = args.modes.split(",")
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            out = tmp / f"{mode}{r}"
            cmd = [sys.executable, "-m", "ntulm", "-q", "finetune", "--posts", str(sample),
                   "--no-ntu", "--out", str(out), f"max_steps={args.steps}", "max_epochs=1",
                   "batch_size=32", "max_length=64", "head_warmup_steps=0",
                   "eval_max_posts=500", "seed=13"]  # fmt: skip
            env_set, extra = MODES[mode]
            cmd += extra
            env = {**os.environ, **env_set}
            done, wall, peak = run_measured(cmd, env=env)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            rows[mode].append(
                {
                    "wall_s": round(wall, 1),
                    "peak_rss_mb": round(peak, 1),
                    "weights": weights_digest(out),
                }
            )
    digests = {row["weights"] for rs in rows.values() for row in rs}
    best = {m: min(x["peak_rss_mb"] for x in rs) for m, rs in rows.items()}
    result = {
        "what": "ntulm finetune, no NTU, all-MiniLM-L6-v2, train_dtype auto (bf16 autocast), "
        f"batch 32, max_length 64, {args.steps} steps, {n} posts of {args.posts}",
        "torch_threads": "default (2 cores)",
        "uptime": uptime,
        "runs": rows,
        **{f"peak_rss_mb_{m}": best[m] for m in modes},
        **{
            f"wall_ratio_{m}_vs_{modes[0]}": round(
                min(x["wall_s"] for x in rows[m]) / min(x["wall_s"] for x in rows[modes[0]]), 3
            )
            for m in modes[1:]
        },
        "same_weights": len(digests) == 1,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
