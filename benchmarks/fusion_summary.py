"""Summarise an ``ntulm run`` of fusion designs and name the recommended configuration.

    python benchmarks/fusion_summary.py benchmarks/results/fusion/design/results.json

Writes ``summary.json`` beside the results (and prints it). Per variant: the headline metric of
every task (mean over seeds), the mean over the IRA tasks and over TweetEval, the held-out bits of
its fine-tuned model, and its TweetEval family interval against the baseline, and the
recommended variant by ``RULE`` (written after the first design run had been read, so not blind
to it; applied unchanged to every later run). The rule encodes issue 11's goals: at least
post-concat on IRA, no worse than BERT where posts have no NTUs, perplexity not worse.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

RULE = (
    "among the variants that (1) do not lose on the TweetEval family (interval against the "
    "baseline below 0) and (2) whose model's held-out bits are not above the baseline's, the one "
    "with the highest mean headline metric over the IRA tasks; ties by fewer bits"
)


def summarise(results: dict) -> dict:
    cfg = results["config"]
    base = cfg["baseline"]
    variants = {v["name"]: v for v in cfg["variants"]}
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in results["runs"]:
        task = results["tasks"][run["task"]]
        per[(run["variant"], run["task"])].append(run["metrics"][task["metrics"][0]])
    bits = {k: float(np.mean([x["best_eval_bits"] for x in v])) for k, v in results["lm"].items()}
    fam = results.get("significance", {}).get("families", {}).get("TweetEval", {})
    rows = {}
    for name, v in variants.items():
        model = v.get("post_concat_of") or v.get("model_of") or name
        heads = {t: float(np.mean(per[(name, t)])) for t in results["tasks"] if per[(name, t)]}
        ira = [x for t, x in heads.items() if results["tasks"][t]["family"] != "TweetEval"]
        te = [x for t, x in heads.items() if results["tasks"][t]["family"] == "TweetEval"]
        rows[name] = {
            "model": model,
            "headline": {t: round(x, 4) for t, x in heads.items()},
            "ira_mean": round(float(np.mean(ira)), 4) if ira else None,
            "tweeteval_mean": round(float(np.mean(te)), 4) if te else None,
            "bits": round(bits[model], 4) if model in bits else None,
            "tweeteval_vs_baseline": fam.get(name),
        }
    eligible = [
        n
        for n, r in rows.items()
        if n != base
        and r["ira_mean"] is not None
        and (r["tweeteval_vs_baseline"] or {}).get("mark") != "loss"
        and r["bits"] is not None
        and r["bits"] <= rows[base]["bits"]
    ]
    best = (
        max(eligible, key=lambda n: (rows[n]["ira_mean"], -rows[n]["bits"])) if eligible else None
    )
    return {
        "baseline": base,
        "design_run": bool(cfg["eval"].get("design")),
        "rule": RULE,
        "variants": rows,
        "recommended": best,
        "recommended_variant": variants.get(best),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results")
    args = ap.parse_args()
    path = Path(args.results)
    summary = summarise(json.loads(path.read_text()))
    (path.parent / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: summary[k] for k in ("recommended", "design_run")}))
    for n, r in summary["variants"].items():
        print(f"{n:32s} IRA {r['ira_mean']}  TweetEval {r['tweeteval_mean']}  bits {r['bits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
