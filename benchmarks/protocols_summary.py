"""One table of the paper CPU experiment under both evaluation protocols (issue 10).

    python benchmarks/protocols_summary.py --run paper=runs/paper_cpu_seeds \
        --run temporal=runs/paper_cpu_temporal [--run "user filter"=runs/paper_cpu_userfilter] \
        --out benchmarks/results/protocols

For every run (an ``ntulm run`` output directory with ``results.json`` and
``predictions.parquet``) and every variant: the headline metric of each task family (IRA tasks one
by one, TweetEval as the mean of its tasks) as mean ± std over (fine-tuning seed, MLP seed) runs;
the paired bootstrap interval of the difference against BERT and against BERT-post-concat (the
report's resampling, ``ntulm.evaluate.significance.compare_runs``: test posts and seed pairings);
whether a gain over BERT clears the variant's negative controls; and the held-out bits of each
fine-tuned model (mean ± std over fine-tuning seeds). Writes ``summary.json`` and ``summary.md``.
Nothing here chooses a design: it restates finished test-set runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_variants import load_runs  # noqa: E402
from ntulm.pipeline.report import significance  # noqa: E402

POST_CONCAT = "BERT-post-concat"


def _intervals(results: dict, runs: list[dict], baseline: str) -> dict:
    return significance({**results, "runs": runs}, baseline)


def _row(c: dict | None) -> dict | None:
    if c is None:
        return None
    out = {k: round(float(c[k]), 4) for k in ("diff", "low", "high")}
    out["mark"] = c["mark"]
    if c.get("vs_controls"):
        out["vs_controls"] = {
            n: {**{k: round(float(x[k]), 4) for k in ("diff", "low", "high")}, "mark": x["mark"]}
            for n, x in c["vs_controls"].items()
        }
        out["clears_controls"] = bool(c.get("counts"))
    return out


def summarise_run(run_dir: Path) -> dict:
    results, runs = load_runs(run_dir)
    cfg = results["config"]
    tasks = results["tasks"]
    fams = defaultdict(list)
    for t, info in tasks.items():
        fams[info["family"]].append(t)
    # headline per (variant, family): per (finetune seed, MLP seed) the family mean, then mean/std
    per: dict[tuple[str, str], dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results["runs"]:
        t = tasks[r["task"]]
        key = (r.get("finetune_seed"), r.get("seed"))
        per[(r["variant"], t["family"])][key].append(r["metrics"][t["metrics"][0]])
    vs_bert = _intervals(results, runs, cfg.get("baseline", "BERT"))
    names = [v["name"] for v in cfg["variants"]]
    vs_pc = _intervals(results, runs, POST_CONCAT) if POST_CONCAT in names else None

    def lookup(cmp: dict | None, fam: str, variant: str) -> dict | None:
        if cmp is None:
            return None
        group = cmp["families"] if fam in cmp["families"] else cmp["tasks"]
        return _row(group.get(fam, {}).get(variant))

    bits = {
        m: [float(x["best_eval_bits"]) for x in v]
        for m, v in results["lm"].items()
        if isinstance(v, list)
    }
    out_variants = {}
    for v in cfg["variants"]:
        name = v["name"]
        model = v.get("post_concat_of") or v.get("model_of") or name
        fam_rows = {}
        for fam in fams:
            vals = [float(np.mean(x)) for x in per[(name, fam)].values()]
            if not vals:
                continue
            fam_rows[fam] = {
                "mean": round(float(np.mean(vals)), 4),
                "std": round(float(np.std(vals)), 4),
                "n_runs": len(vals),
                "vs_bert": lookup(vs_bert, fam, name),
                "vs_post_concat": lookup(vs_pc, fam, name),
            }
        b = bits.get(model)
        out_variants[name] = {
            "model": model,
            "control": v.get("control"),
            "families": fam_rows,
            "bits": None
            if not b
            else {"mean": round(float(np.mean(b)), 4), "std": round(float(np.std(b)), 4)},
        }
    proto = results.get("protocol", {})
    return {
        "run": str(run_dir),
        "protocol": proto,
        "name": results.get("name"),
        "finetune_seeds": sorted({r.get("finetune_seed") for r in results["runs"]}),
        "mlp_seeds": sorted({r.get("seed") for r in results["runs"]}),
        "user_filter": [
            cfg.get("graph", {}).get("min_user_hashtags"),
            cfg.get("graph", {}).get("max_user_hashtags"),
        ],
        "tasks": {
            t: {k: tasks[t].get(k) for k in ("family", "n_train", "n_val", "n_test", "n_classes")}
            for t in tasks
        },
        "variants": out_variants,
    }


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    return f"{row['diff']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] {row['mark']}"


def markdown(summary: dict) -> str:
    lines = []
    for label, s in summary["runs"].items():
        fams = sorted(
            {f for v in s["variants"].values() for f in v["families"]},
            key=lambda f: (f == "TweetEval", f),
        )
        proto = s["protocol"]
        lines.append(
            f"### {label}: protocol {proto.get('protocol')}"
            + (f", cutoff {proto['cutoff']}" if proto.get("cutoff") else "")
            + f"; fine-tuning seeds {s['finetune_seeds']}, MLP seeds {s['mlp_seeds']}; "
            f"user filter {s['user_filter']}\n"
        )
        lines.append("Headline metric, mean ± std over (fine-tuning seed, MLP seed) runs:\n")
        lines.append("| variant | " + " | ".join(fams) + " | bits |")
        lines.append("|---" * (len(fams) + 2) + "|")
        for name, v in s["variants"].items():
            cells = [
                f"{v['families'][f]['mean']:.3f} ± {v['families'][f]['std']:.3f}"
                if f in v["families"]
                else "-"
                for f in fams
            ]
            b = v["bits"]
            bits = f"{b['mean']:.4f} ± {b['std']:.4f}" if b else "-"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {bits} |")
        for which, title in (("vs_bert", "BERT"), ("vs_post_concat", POST_CONCAT)):
            lines.append(f"\nDifference against {title}, paired bootstrap 95% interval, mark:\n")
            lines.append("| variant | " + " | ".join(fams) + " |")
            lines.append("|---" * (len(fams) + 1) + "|")
            for name, v in s["variants"].items():
                if name == title:
                    continue
                cells = []
                for f in fams:
                    row = v["families"].get(f, {}).get(which)
                    c = _cell(row)
                    if which == "vs_bert" and row and "clears_controls" in row:
                        c += (
                            ", clears controls" if row["clears_controls"] else ", not past controls"
                        )
                    cells.append(c)
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", action="append", required=True, help="LABEL=RUN_DIR (repeatable)")
    ap.add_argument("--out", required=True, help="directory for summary.json and summary.md")
    args = ap.parse_args()
    runs = {}
    for spec in args.run:
        label, _, path = spec.partition("=")
        if not path:
            print(f"--run {spec!r}: expected LABEL=RUN_DIR", file=sys.stderr)
            return 2
        runs[label] = summarise_run(Path(path))
    summary = {"command": " ".join(sys.argv), "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
