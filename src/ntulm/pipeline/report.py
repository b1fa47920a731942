"""The report of ``ntulm run``: Markdown tables in the shape of the paper's Tables 2, 3 and 4, PNG
figures (improvement over the baseline per task: overall / overlap / non-overlap; perplexity), and
every number in ``results.json``. Values over seeds are shown as mean ± std.

Every variant's headline-metric difference against the baseline gets a paired bootstrap interval
(``evaluate/significance.py``) and a mark: win / loss only when the interval excludes 0. Variants
with negative controls (``control`` variants over the same model) are also compared with each
control; their gain *counts* only where it clears the baseline and every control. The per-post
outcomes behind the intervals go to ``predictions.parquet``, not to ``results.json``."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ntulm.artifacts import atomic_path, write_json, write_text
from ntulm.evaluate.significance import compare_runs
from ntulm.pipeline.config import VariantSpec, controls_of

SUBSETS = ("metrics", "overlap", "non_overlap")
SUBSET_NAMES = {"metrics": "overall", "overlap": "overlap", "non_overlap": "non-overlap"}
MARKS = {"win": " ▲", "loss": " ▼", "no effect": ""}


def _ms(values: list[float], pct: bool = False, digits: int = 3) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "—"
    scale = 100.0 if pct else 1.0
    m = float(np.mean(vals)) * scale
    if len(vals) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {float(np.std(vals, ddof=1)) * scale:.{digits}f}"


def aggregate(results: dict[str, Any]) -> dict[str, Any]:
    """Per (variant, task, subset, metric) the list of values over seeds; per (variant, task,
    subset) the list of % changes of the headline metric against the baseline (same seed)."""
    runs = results["runs"]
    base = results["config"]["baseline"]
    values: dict = defaultdict(list)
    by_key = {}
    for r in runs:
        by_key[(r["variant"], r["task"], r["seed"], r["finetune_seed"])] = r
        for subset in SUBSETS:
            for metric, v in (r.get(subset) or {}).items():
                values[(r["variant"], r["task"], subset, metric)].append(v)
    changes: dict = defaultdict(list)
    for (variant, task, seed, fts), r in by_key.items():
        b = by_key.get((base, task, seed, fts))
        head = results["tasks"][task]["metrics"][0]
        if b is None or variant == base:
            continue
        for subset in SUBSETS:
            mine, theirs = (r.get(subset) or {}).get(head), (b.get(subset) or {}).get(head)
            if mine is not None and theirs:
                changes[(variant, task, subset)].append(100.0 * (mine - theirs) / abs(theirs))
    return {"values": values, "changes": changes}


def _families(results: dict[str, Any]) -> dict[str, list[str]]:
    fam: dict[str, list[str]] = defaultdict(list)
    for name, info in results["tasks"].items():
        fam[info["family"]].append(name)
    # corpus tasks by name, then TweetEval: the same order from a run and from results.json
    return {f: sorted(fam[f]) for f in sorted(fam, key=lambda f: (f == "TweetEval", f))}


def _family_means(
    agg: dict, variant: str, tasks: list[str], head_of: dict[str, str], subset: str = "metrics"
) -> list[float]:
    """Per seed index, the mean over the family's tasks of their headline metric."""
    per_task = [agg["values"].get((variant, t, subset, head_of[t]), []) for t in tasks]
    n = min((len(v) for v in per_task), default=0)
    out = []
    for i in range(n):
        vals = [v[i] for v in per_task if v[i] is not None]
        if vals:
            out.append(float(np.mean(vals)))
    return out


def table2(results: dict[str, Any], agg: dict) -> str:
    variants = [v["name"] for v in results["config"]["variants"]]
    fams = _families(results)
    head_of = {t: results["tasks"][t]["metrics"][0] for t in results["tasks"]}
    cols = ["Model", "NTUs", "Perplexity bits"] + [
        f"{f} {_fam_metric(fams[f], head_of)}" for f in fams
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    cfg_variants = {v["name"]: v for v in results["config"]["variants"]}
    for name in variants:
        v = cfg_variants[name]
        ntus = "+".join(v["ntu_types"]) if (v["use_ntu"] or v["post_concat_of"]) else "—"
        if v.get("concat", "mean") == "per_type":  # appended side by side, not averaged
            ntus = " / ".join(v["ntu_types"]) + " (appended per type)"
        if v.get("concat_scale"):  # block weights of the appended vectors
            ntus += "; weights " + ", ".join(f"{t} {w:g}" for t, w in v["concat_scale"].items())
        if v.get("pooling", "mean") != "mean":
            ntus += f"; {v['pooling']} pooling"
        lm = results["lm"].get(name) or []
        same = v.get("post_concat_of") or v.get("model_of")
        bits = _ms([r["best_eval_bits"] for r in lm]) if lm else f"(= {same})"
        row = [name, ntus, bits] + [_ms(_family_means(agg, name, fams[f], head_of)) for f in fams]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _fam_metric(tasks: list[str], head_of: dict[str, str]) -> str:
    heads = sorted({head_of[t] for t in tasks})
    label = "/".join(heads)
    return f"mean {label}" if len(tasks) > 1 else label


def table3(results: dict[str, Any], agg: dict) -> str:
    variants = [v["name"] for v in results["config"]["variants"]]
    sig = (results.get("significance") or {}).get("tasks", {})
    cols = ["Dataset", "Task", "Metric", *variants, "Best"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for fam, tasks in _families(results).items():
        for t in tasks:
            for metric in results["tasks"][t]["metrics"]:
                means = {v: agg["values"].get((v, t, "metrics", metric), []) for v in variants}
                scored = {
                    v: float(np.mean([x for x in vals if x is not None]))
                    for v, vals in means.items()
                    if any(x is not None for x in vals)
                }
                best = max(scored, key=scored.get) if scored else "—"
                cells = [(f"**{_ms(means[v])}**" if v == best else _ms(means[v])) for v in variants]
                if metric == results["tasks"][t]["metrics"][0]:  # headline: win / loss marks
                    marks = {
                        v: (sig.get(t, {}).get(v) or {}).get("mark", "no effect") for v in variants
                    }
                    cells = [c + MARKS[marks[v]] for c, v in zip(cells, variants, strict=True)]
                lines.append("| " + " | ".join([fam, t, metric, *cells, best]) + " |")
    return "\n".join(lines)


def slice_sizes(results: dict[str, Any], tasks: list[str]) -> dict[str, int]:
    """Test posts per slice (overall / overlap / non-overlap) summed over ``tasks``; the same
    for every model (the overlap flags are shared)."""
    out = {s: 0 for s in SUBSETS}
    for t in tasks:
        n = next((r["n"] for r in results["runs"] if r["task"] == t and "n" in r), None)
        if n is None:
            continue
        out["metrics"] += int(n.get("test", 0))
        out["overlap"] += int(n.get("overlap", 0))
        out["non_overlap"] += int(n.get("non_overlap", 0))
    return out


def table4(results: dict[str, Any], agg: dict) -> str:
    base = results["config"]["baseline"]
    others = [v["name"] for v in results["config"]["variants"] if v["name"] != base]
    cols = ["Dataset", "Model"] + [SUBSET_NAMES[s] for s in SUBSETS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for fam, tasks in _families(results).items():
        sizes = slice_sizes(results, tasks)
        for v in others:
            cells = []
            for s in SUBSETS:
                per_task = [agg["changes"].get((v, t, s), []) for t in tasks]
                n = min((len(x) for x in per_task), default=0)
                seeds = [float(np.mean([x[i] for x in per_task])) for i in range(n)]
                cell = _ms([x / 100 for x in seeds], pct=True, digits=2) + ("%" if seeds else "")
                if not sizes[s]:
                    cell = "n/a"  # an empty slice: no posts, no figure
                cells.append(f"{cell} (n={sizes[s]:,})")
            lines.append("| " + " | ".join([fam, v, *cells]) + " |")
    return "\n".join(lines)


def _ci(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "—"
    text = f"{cell['diff']:+.3f} [{cell['low']:+.3f}, {cell['high']:+.3f}]"
    return text + (f" **{cell['mark']}**" if cell["mark"] != "no effect" else " no effect")


def _sig_rows(results: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(dataset, task or 'mean of N tasks', metric, {variant: cell}) in report order."""
    sig = results["significance"]
    rows = []
    for fam, tasks in _families(results).items():
        for t in tasks:
            rows.append((fam, t, results["tasks"][t]["metrics"][0], sig["tasks"].get(t, {})))
        if fam in sig.get("families", {}):
            heads = _fam_metric(tasks, {t: results["tasks"][t]["metrics"][0] for t in tasks})
            rows.append((fam, f"mean of {len(tasks)} tasks", heads, sig["families"][fam]))
    return rows


def significance_table(results: dict[str, Any]) -> str:
    """Per task, each variant's difference to the baseline: point [95% interval] and mark."""
    base = results["config"]["baseline"]
    others = [v["name"] for v in results["config"]["variants"] if v["name"] != base]
    cols = ["Dataset", "Task", "Metric", *others]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for fam, task, metric, row in _sig_rows(results):
        cells = [fam, task, metric, *(_ci(row.get(v)) for v in others)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def controls_table(results: dict[str, Any]) -> str:
    """Each controlled model against the baseline and against each of its controls."""
    base = results["config"]["baseline"]
    lines = [
        f"| Dataset | Task | Model | vs {base} | vs controls | gain counts |",
        "|---|---|---|---|---|---|",
    ]
    for fam, task, _, row in _sig_rows(results):
        for v, cell in row.items():
            if cell.get("counts") is None:
                continue
            vs = "; ".join(f"{c}: {_ci(ci)}" for c, ci in cell["vs_controls"].items()) or "—"
            verdict = "**yes**" if cell["counts"] else "no"
            lines.append(f"| {fam} | {task} | {v} | {_ci(cell)} | {vs} | {verdict} |")
    return "\n".join(lines)


def significance(results: dict[str, Any], baseline: str | None = None) -> dict[str, Any]:
    """``results["significance"]``: the paired bootstrap over the runs' per-post outcomes, against
    ``baseline`` (default: the config's, usually BERT), with every controlled variant's controls."""
    cfg = results["config"]
    ev = cfg.get("eval", {})
    variants = [VariantSpec.model_validate(v) for v in cfg["variants"]]
    return compare_runs(
        results["runs"],
        baseline or cfg["baseline"],
        [v.name for v in variants],
        _families(results),
        controls_of(variants),
        n_boot=ev.get("bootstrap", 1000),
        seed=ev.get("bootstrap_seed", 0),
        level=ev.get("level", 0.95),
    )


def write_predictions(runs: list[dict[str, Any]], path: Path) -> None:
    """The per-post outcomes of every run (one row per run), for re-running the bootstrap."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r for r in runs if r.get("per_post")]
    table = pa.table(
        {
            "variant": [r["variant"] for r in rows],
            "task": [r["task"] for r in rows],
            "seed": [r.get("seed") for r in rows],
            "finetune_seed": [r.get("finetune_seed") for r in rows],
            "metric": [r["per_post"]["metric"] for r in rows],
            "y": pa.array([r["per_post"].get("y") for r in rows], pa.list_(pa.int64())),
            "pred": pa.array([r["per_post"].get("pred") for r in rows], pa.list_(pa.int64())),
            "score": pa.array([r["per_post"].get("score") for r in rows], pa.list_(pa.float64())),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def improvement_bars(
    agg: dict, variant: str, tasks: list[str], subset: str
) -> tuple[list[float], list[float]]:
    """Mean and std over seeds of the % change of the headline metric, per task, for one
    subset; NaN (no bar, marked n/a) where the slice is empty, e.g. no non-overlap test posts."""
    vals = [agg["changes"].get((variant, t, subset), []) for t in tasks]
    means = [float(np.mean(c)) if c else float("nan") for c in vals]
    errs = [float(np.std(c, ddof=1)) if len(c) > 1 else 0.0 for c in vals]
    return means, errs


def figures(results: dict[str, Any], agg: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    base = results["config"]["baseline"]
    others = [v["name"] for v in results["config"]["variants"] if v["name"] != base]
    tasks = list(results["tasks"])
    if others and tasks:
        fig, axes = plt.subplots(
            len(others), 1, figsize=(max(6, 0.9 * len(tasks) + 2), 2.6 * len(others)), squeeze=False
        )
        width = 0.27
        x = np.arange(len(tasks))
        for ax, v in zip(axes[:, 0], others, strict=True):
            for j, s in enumerate(SUBSETS):
                means, errs = improvement_bars(agg, v, tasks, s)
                pos = x + (j - 1) * width
                ax.bar(pos, means, width, yerr=errs, label=SUBSET_NAMES[s], capsize=2)
                for p, m in zip(pos, means, strict=True):
                    if np.isnan(m):  # an empty slice: no bar, and say so rather than draw a 0
                        ax.text(p, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_title(f"{v}: % change of the headline metric vs {base}", fontsize=10)
            ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("% change")
        axes[0, 0].legend(fontsize=8, ncols=3)
        fig.tight_layout()
        _save(fig, out / "improvement.png")
        plt.close(fig)
        made.append("improvement.png")
    lm = {k: [r["best_eval_bits"] for r in v] for k, v in results["lm"].items()}
    if lm:
        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(lm)
        ax.bar(
            names,
            [np.mean(v) for v in lm.values()],
            yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in lm.values()],
            color="tab:blue",
        )
        lo = min(min(v) for v in lm.values())
        ax.set_ylim(lo * 0.97, max(max(v) for v in lm.values()) * 1.01)
        ax.set_ylabel("held-out MLM perplexity (bits)")
        ax.set_title("Perplexity in bits (lower is better)", fontsize=10)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        fig.tight_layout()
        _save(fig, out / "perplexity.png")
        plt.close(fig)
        made.append("perplexity.png")
    return made


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def write_report(results: dict[str, Any], out: Path) -> None:
    if any(r.get("per_post") for r in results["runs"]):
        results["significance"] = significance(results)
        write_predictions(results["runs"], out / "predictions.parquet")
    agg = aggregate(results)
    pics = figures(results, agg, out)
    cfg = results["config"]
    seeds = cfg["seeds"]
    g = results.get("graph", {})
    if "models" in results:  # `ntulm evaluate`: saved models, no graph or fine-tuning here
        made = (
            "Models (saved): "
            + ", ".join(f"{k} = `{v}`" for k, v in results["models"].items())
            + "."
        )
        seeds_note = "downstream MLP"
    else:
        made = (
            f"Graph: {g.get('nodes', {}).get('user', 0):,} users, {g.get('nodes', {}).get('hashtag', 0):,} hashtags, "
            f"{g.get('edges', 0):,} edges. Fine-tuning sample: {cfg['lm_posts']:,} posts, backbone `{cfg['lm']['backbone']}`."
        )
        seeds_note = (
            "fine-tuning and downstream MLP" if cfg["finetune_per_seed"]
            else f"downstream MLP only; fine-tuning once, seed {cfg['lm']['seed']}"
        )  # fmt: skip
    lines = [
        f"# NTULM report: {results['name']}",
        "",
        f"Corpus: {results['corpus']['accepted']:,} posts ({results['corpus']['rejected']:,} rejected). {made}",
        f"Seeds {seeds} ({seeds_note}; task splits seed {cfg['eval']['seed']}). Values are mean ± std over seeds. "
        f"Overlap = the test post has a known NTU ({'+'.join(results['overlap_types']) or 'none used'})."
        + (
            " Retrieval trains nothing, so its MAP does not vary with the seed (± 0)."
            if any(t.get("kind") == "retrieval" for t in results["tasks"].values())
            else ""
        ),
        "",
        protocol_line(results),
        "",
        "## Table 2: models compared (perplexity on held-out fine-tuning posts; headline metric per dataset)",
        "",
        table2(results, agg),
        "",
        "## Table 3: every task and metric",
        "",
        table3(results, agg),
        "",
        f"## Table 4: % change of the headline metric against {cfg['baseline']}, overall / overlap / non-overlap",
        "",
        "n = test posts in the slice (summed over a dataset's tasks); a slice of few posts "
        "gives a noisy figure, an empty one none (n/a).",
        "",
        table4(results, agg),
        "",
    ]
    sig = results.get("significance")
    if sig:
        lines += [
            f"## Significance: headline metric of each model minus {cfg['baseline']}",
            "",
            f"Point estimate [{sig['level']:.0%} paired bootstrap interval] over {sig['n_boot']} "
            "replicates: each replicate resamples the test posts (the same draw for both models "
            "and every seed) and the seed pairings, with replacement (`docs/evaluate.md`). "
            "**win** / **loss** only when the interval excludes 0; ▲ / ▼ in Table 3.",
            "",
            significance_table(results),
            "",
        ]
        if any(c.get("counts") is not None for row in sig["tasks"].values() for c in row.values()):
            lines += [
                "## Negative controls",
                "",
                "The same model fed another post's NTUs (shuffled within the split) or the NTU "
                "table mean. A gain counts only where it wins against the baseline and against "
                "every control.",
                "",
                controls_table(results),
                "",
            ]
    lines += [
        "## Tasks",
        "",
        "| task | dataset | train | val | test | classes | metrics | graph exclusion |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in results["tasks"].items():
        excl = t.get("graph_exclusion") or "—"
        if "graph_excluded_posts" in t:
            excl += f" ({t['graph_excluded_posts']:,} posts, {t['graph_excluded_pairs']:,} pairs)"
        lines.append(
            f"| {name} | {t['family']} | {t['n_train']:,} | {t['n_val']:,} | {t['n_test']:,} | {t['n_classes']} | {', '.join(t['metrics'])} | {excl} |"
        )
    timed = {n: t for n, t in results["tasks"].items() if "posts_after_cutoff" in t}
    if timed:
        lines += [
            "",
            "Temporal protocol, per corpus task (posts it could use): before the cutoff / at or "
            "after / without a time; post-cutoff posts of the training split dropped "
            "(train_from: before); pre-cutoff posts of validation and test authors dropped.",
            "",
            "| task | before | after | no time | after-cutoff train dropped | val/test authors' earlier posts dropped |",
            "|---|---|---|---|---|---|",
        ]
        for name, t in timed.items():
            lines.append(
                f"| {name} | {t['posts_before_cutoff']:,} | {t['posts_after_cutoff']:,} | "
                f"{t['posts_without_time']:,} | {t['after_cutoff_train_posts_dropped']:,} | "
                f"{t.get('before_cutoff_posts_of_val_test_authors_dropped', 0):,} |"
            )
    kge = results.get("kge") or {}
    if kge:
        lines += ["", "## NTU embeddings: link prediction on held-out edges", "", kge_table(kge)]
    lines += ["", "## Figures", ""] + [f"![{p}]({p})" for p in pics]
    st = results["stages"]
    lines += [
        "",
        f"Stages run: {', '.join(st['ran']) or 'none'}; reused: {', '.join(st['reused']) or 'none'}. Total {results['seconds']:.0f} s.",
        "",
    ]
    runs = [{k: v for k, v in r.items() if k != "per_post"} for r in results["runs"]]
    write_json(out / "results.json", {**results, "runs": runs})  # per-post: predictions.parquet
    write_text(out / "report.md", "\n".join(lines))


def protocol_line(results: dict[str, Any]) -> str:
    """The evaluation protocol in one paragraph (``results["protocol"]``)."""
    pr = results.get("protocol") or {"protocol": results["config"].get("protocol", "paper")}
    design = (
        " **Design run: every task is scored on half of its validation split (the other half "
        "early-stops the MLP); no test post was read.** Choose designs here, report test numbers "
        "from a run without `eval.design`."
        if results["config"].get("eval", {}).get("design")
        else ""
    )
    if pr["protocol"] != "temporal":
        return (
            f"Protocol: {pr['protocol']} (random splits by post or author; the tasks' validation "
            "and test posts are kept out of fine-tuning, the hashtag task's also out of the graph)."
            + design
        )
    rule = (
        "training posts from before the cutoff only (nothing at or after it is trained on)"
        if pr["train_from"] == "before"
        else "training posts from either side of the cutoff (the post-cutoff posts of the "
        "training split too)"
    )
    return (
        f"Protocol: temporal, cutoff {pr['cutoff']} UTC (given: {pr['cutoff_given']}). The graph, "
        "the NTU embeddings and the fine-tuning sample see only posts strictly before it; every "
        "corpus task's validation and test posts are at or after it (split by author: authors "
        "are split as in the paper protocol among the post-cutoff posts, only their post-cutoff "
        f"posts are validated or tested on); {rule}. Posts: {pr['posts_before']:,} before, "
        f"{pr['posts_after']:,} at or after, {pr['posts_without_time']:,} without a time (left "
        "out of both sides). TweetEval has no times and keeps its own splits." + design
    )


def kge_table(kge: dict[str, Any]) -> str:
    """Per relation: MRR and Hits@k of the trained embeddings, and the random baseline's MRR."""
    lp, rnd = kge.get("link_prediction") or {}, kge.get("random_baseline") or {}
    rels = [r for r in lp if isinstance(lp[r], dict) and "mrr" in lp[r]]
    if not rels:
        return _short_json(kge)
    rows = [
        "| relation | held-out edges | MRR | Hits@1 | Hits@10 | Hits@50 | random MRR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rels, key=lambda r: (r == "overall", r)):
        m = lp[r]
        edges = m.get("edges", m.get("n", 0) // 2)  # n counts ranks: two per edge
        few = " (few)" if r != "overall" and edges < 50 else ""
        rows.append(
            f"| {r} | {edges:,}{few} | {m['mrr']:.4f} | {m.get('hits@1', 0):.3f} | "
            f"{m.get('hits@10', 0):.3f} | {m.get('hits@50', 0):.3f} | "
            f"{(rnd.get(r) or {}).get('mrr', float('nan')):.4f} |"
        )
    protocol = lp.get("protocol")
    note = (protocol[0].upper() + protocol[1:] + ".") if isinstance(protocol, str) else ""
    for warning in lp.get("warnings") or []:
        note += f" Warning: {warning}."
    train = kge.get("train") or {}
    if train:
        note += f" Trained on {train.get('edges', 0):,} edges, {train.get('epochs', '?')} epochs."
    return "\n".join(rows) + "\n\n" + note


def _short_json(obj: Any) -> str:
    import json

    text = json.dumps(obj, indent=1, default=str)
    return text if len(text) < 4000 else text[:4000] + "\n..."
