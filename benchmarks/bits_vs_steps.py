"""Issue 11, design 5: a longer MLM fine-tune, held-out bits against steps for BERT and NTULM.

The CPU preset fine-tunes one epoch on 20,000 posts; this runs one epoch on ``--lm-posts`` (default
100,000: 5x the tokens) drawn from the whole corpus with a seeded permutation, scoring the
held-out posts every ``--eval-every`` steps (``LMConfig.eval_every``; training is unchanged by
it). For each seed, every model sees the same sample, the same held-out posts and masks, the same
batches: the difference in bits at each step is paired. NTULM uses the NTU table of ``--ntu``
(``ntulm train-kge`` on the graph of the same corpus). One model at a time, resumable: a finished
model directory is reused.

    python benchmarks/bits_vs_steps.py --posts ../shared/data/ira --ntu /work/cache/ira/kge \\
        --work /work/runs/bvs --seeds 1 2

writes ``benchmarks/results/fusion/bits_vs_steps/{results.json,bits_vs_steps.png}`` after each
model, so a cut run still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import time
from pathlib import Path

import numpy as np

from ntulm.artifacts import is_done, mark_done, read_json, unmark, write_json, write_text
from ntulm.graph.build import read_posts_table
from ntulm.graph.config import GraphConfig
from ntulm.kge import NTUEmbeddings
from ntulm.lm.config import STAGE, LMConfig
from ntulm.lm.train import finetune
from ntulm.posts.rows import PostsTable

RESULTS = Path(__file__).parent / "results" / "fusion" / "bits_vs_steps"
PER_TYPE = {"use_ntu": True, "ntu_types": ["author", "hashtag"], "ntu_tokens": "per_type"}
RECIPE = {**PER_TYPE, "ntu_warmup": True, "ntu_lr": 5.0e-4}  # the default's (ntulm run)
MODELS = {  # name -> LMConfig overrides (the paper CPU preset's lm section is the base)
    "BERT": {"use_ntu": False},
    "NTULM author+hashtag": {"use_ntu": True, "ntu_types": ["author", "hashtag"]},
    # The recommended configuration's text model (issue 11): one NTU token per type.
    "NTULM a+h per-type": PER_TYPE,
    # Design (issue 11, perplexity): the NTU projections aligned first, through the frozen encoder
    # (LLaVA's stage 1), alone and with a 10x learning rate for them during fine-tuning.
    "per-type + NTU warm-up": {**PER_TYPE, "ntu_warmup": True},
    "per-type + NTU warm-up + NTU lr 5e-4": RECIPE,
    # Its negative control (lm.ntu_shuffle): the same recipe, every post given another post's NTUs
    # in training and held-out scoring; what it gains over BERT is not the NTUs'.
    "warm-up recipe on shuffled NTUs": {**RECIPE, "ntu_shuffle": True},
}
COLORS = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
BASE = {
    "backbone": "all-MiniLM-L6-v2",
    "max_epochs": 1,
    "max_length": 64,
    "batch_size": 32,
    "lr": 5.0e-5,
    "head_warmup_steps": 200,
    "eval_max_posts": 2000,
    "progress": False,
}


def sample(table_dir: Path, posts: list[str], n: int, seed: int) -> list:
    key = {"posts": [str(p) for p in posts]}  # a table of other inputs is read again
    if not is_done(table_dir, "posts", key):
        unmark(table_dir)
        read_posts_table(posts, GraphConfig(), table_dir, table_dir / "rejected.jsonl", False)
        mark_done(table_dir, "posts", key)
    table = PostsTable(table_dir)
    take = np.random.default_rng(seed).permutation(len(table))[:n]
    return table.take(np.sort(take))


def paired(curves: dict[str, dict[int, list]], a: str, b: str) -> list[dict]:
    """Per step, bits of ``b`` minus bits of ``a`` over the seeds that have both."""
    out = []
    seeds = sorted(set(curves.get(a, {})) & set(curves.get(b, {})))
    if not seeds:
        return out
    steps = [int(s) for s, _, _ in curves[a][seeds[0]]]
    for i, step in enumerate(steps):
        d = [curves[b][s][i][2] - curves[a][s][i][2] for s in seeds if i < len(curves[b][s])]
        base = [curves[a][s][i][2] for s in seeds]
        out.append(
            {
                "step": step,
                "tokens": curves[a][seeds[0]][i][1],
                "seeds": seeds,
                "diff_bits_mean": float(np.mean(d)),
                "diff_bits_per_seed": d,
                "diff_percent_mean": float(100 * np.mean(d) / np.mean(base)),
            }
        )
    return out


def table(report: dict) -> str:
    """``table.md``: per evaluation step, each seed's NTU model − BERT bits and their mean."""
    runs = report["runs"]
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        f"# Held-out bits against steps: BERT vs the NTU models (seeds {seeds})",
        "",
        f"`{report['command']}` (each run's dtype, wall time and load are in results.json).",
        "",
        "| seed | model | train dtype | train / held-out posts | steps | tokens/s | "
        "final bits | load at start |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: (r["seed"], r["model"])):
        load = r.get("uptime_at_start", "").rpartition("load average:")[2].split(",")[0].strip()
        lines.append(
            f"| {r['seed']} | {r['model']} | {r['train_dtype']} | {r['n_train']:,} / "
            f"{r['n_eval']:,} | {r['steps']:,} | {r['tokens_per_s']:.0f} | "
            f"{r['final_eval_bits']:.4f} | {load} |"
        )
    for model, diff in report["minus_bert"].items():
        both = diff[0]["seeds"] if diff else []
        lines += [
            "",
            f"{model} − BERT, paired over the seeds that have both models (same sample, "
            "held-out posts, masks and batches within a seed):",
            "",
            "| step | tokens (M) | " + " | ".join(f"seed {s}" for s in both) + " | mean | mean % |",
            "|---|---|" + "---|" * len(both) + "---|---|",
        ]
        for row in diff:
            per = " | ".join(f"{d:+.4f}" for d in row["diff_bits_per_seed"])
            lines.append(
                f"| {row['step']} | {row['tokens'] / 1e6:.2f} | {per} | "
                f"{row['diff_bits_mean']:+.4f} | {row['diff_percent_mean']:+.2f}% |"
            )
    lines += [""] + [f"- {n}" for n in report.get("notes", [])]
    lines += ["", "![bits vs steps](bits_vs_steps.png)", ""]
    return "\n".join(lines)


def plot(curves: dict[str, dict[int, list]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, dx) = plt.subplots(2, 1, figsize=(7, 7.4), height_ratios=(3, 2), sharex=True)
    color_of = dict(zip(MODELS, COLORS, strict=True))
    seeds = sorted({s for by_seed in curves.values() for s in by_seed})
    style_of = {s: ("-", "--", ":", "-.")[i % 4] for i, s in enumerate(seeds)}  # one per seed
    bert = {seed: {st: b for st, _, b in c} for seed, c in curves.get("BERT", {}).items()}
    for name, by_seed in curves.items():
        color = color_of[name]
        for seed, curve in sorted(by_seed.items()):
            tok = [t / 1e6 for _, t, _ in curve[1:]]  # the point before fine-tuning is off-scale
            bits = [b for _, _, b in curve[1:]]
            style = {"color": color, "alpha": 0.9, "marker": ".", "ls": style_of[seed]}
            ax.plot(tok, bits, label=f"{name} (seed {seed})", **style)
            if name != "BERT" and seed in bert:  # paired with BERT of the same seed, per step
                pts = [(t / 1e6, b - bert[seed][st]) for st, t, b in curve[1:] if st in bert[seed]]
                dx.plot([p[0] for p in pts], [p[1] for p in pts], **style)
    ax.set_ylabel("held-out bits per masked token")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    dx.axhline(0.0, color="tab:gray", lw=1)
    dx.set_ylabel("minus BERT, same seed (bits)")
    dx.set_xlabel("training tokens seen (millions)")
    dx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", nargs="+", default=["../shared/data/ira"])
    ap.add_argument("--ntu", default="/work/cache/ira/kge")
    ap.add_argument("--work", default="/work/runs/bvs", help="posts table and model directories")
    ap.add_argument("--lm-posts", type=int, default=100_000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--models",
        nargs="+",
        choices=list(MODELS),
        default=list(MODELS),
        help="models to fine-tune for --seeds (runs of the others are kept from results.json)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ntu = NTUEmbeddings.load(args.ntu)
    curves: dict[str, dict[int, list]] = {m: {} for m in MODELS}
    runs: list[dict] = []
    # Runs of other seeds from an earlier invocation (same sample size and eval cadence) are kept,
    # so seeds can be added one session at a time; each run records its own dtype and uptime.
    prior, old_notes, earlier = out / "results.json", [], {}
    if prior.exists():
        old = read_json(prior)
        old_notes = old.get("notes", [])
        same = old.get("lm_posts") == args.lm_posts and (
            old.get("config", {}).get("eval_every") == args.eval_every
        )
        for r in old.get("runs", []) if same else []:
            earlier[(r["model"], r["seed"])] = r
            if (r["seed"] not in args.seeds or r["model"] not in args.models) and (
                r["model"] in curves
            ):
                runs.append(r)
                curves[r["model"]][r["seed"]] = r["eval_curve"]
    for seed in args.seeds:
        posts = sample(work / "posts", args.posts, args.lm_posts, seed)
        for name in args.models:
            over = MODELS[name]
            cfg = LMConfig.build(
                {
                    **BASE,
                    **over,
                    "seed": seed,
                    "eval_every": args.eval_every,
                    "num_threads": args.threads,
                }
            )
            d = work / f"{name.replace(' ', '_').replace('+', '_')}_s{seed}"
            if (name, seed) in earlier and is_done(d, STAGE, cfg.model_dump(mode="json")):
                # Finished in an earlier invocation: keep its record (its own wall time, load).
                runs.append(earlier[(name, seed)])
                curves[name][seed] = earlier[(name, seed)]["eval_curve"]
                continue
            uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
            t = time.perf_counter()
            res = finetune(posts, cfg, d, ntu=ntu if cfg.use_ntu else None, resume=True)
            curves[name][seed] = res.eval_curve
            runs.append(
                {
                    "model": name,
                    "seed": seed,
                    "dir": str(d),
                    "n_train": res.n_train,
                    "n_eval": res.n_eval,
                    "steps": res.steps,
                    "train_tokens": res.train_tokens,
                    "train_dtype": res.train_dtype,
                    "tokens_per_s": res.tokens_per_s,
                    "wall_s": round(time.perf_counter() - t, 1),
                    "initial_eval_bits": res.initial_eval_bits,
                    "final_eval_bits": res.eval_bits[-1] if res.eval_bits else None,
                    "overlap_eval": res.overlap_eval,
                    "eval_curve": res.eval_curve,
                    "uptime_at_start": uptime,
                }
            )
            minus_bert = {m: paired(curves, "BERT", m) for m in MODELS if m != "BERT"}
            report = {
                "benchmark": "bits_vs_steps",
                "command": "python benchmarks/bits_vs_steps.py "
                + " ".join(
                    f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in vars(args).items()
                    if k != "out"
                ),
                "lm_posts": args.lm_posts,
                "baseline_lm_posts": 20_000,
                "tokens_ratio_vs_cpu_preset": args.lm_posts / 20_000,
                "config": {**BASE, "eval_every": args.eval_every, "num_threads": args.threads},
                "models": MODELS,
                "runs": runs,
                "ntulm_minus_bert": minus_bert["NTULM author+hashtag"],  # the paper's design
                "minus_bert": minus_bert,
                "notes": old_notes,
            }
            write_json(out / "results.json", report)
            write_text(out / "table.md", table(report))
            plot(
                {m: c for m, c in curves.items() if c},
                out / "bits_vs_steps.png",
                f"IRA, one epoch on {args.lm_posts:,} posts, MiniLM-L6 "
                f"({', '.join(sorted({r['train_dtype'] for r in runs}))})",
            )
            print(
                json.dumps(
                    {
                        k: runs[-1][k]
                        for k in ("model", "seed", "final_eval_bits", "wall_s", "tokens_per_s")
                    }
                )
            )


if __name__ == "__main__":
    main()
