"""The measured tables of docs/scale.md, rendered from benchmarks/results/scale.json and the cost
model (benchmarks/cost_model.py), so that no figure on that page is typed in by hand.

    python benchmarks/scale_tables.py            # print the blocks
    python benchmarks/scale_tables.py --write    # replace them in docs/scale.md

Each block sits in docs/scale.md between ``<!-- scale_tables:NAME -->`` and
``<!-- /scale_tables:NAME -->``; tests/test_scale_docs.py checks that the page matches the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
DOC = ROOT / "docs" / "scale.md"


def _load(text: str) -> str:
    """``uptime``'s load averages."""
    m = re.search(r"load average: (.*)$", text)
    return m[1] if m else text


def _mb(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def graph_block(r: dict) -> str:
    if "graph" not in r:
        return "Not measured yet."
    g = r["graph"]
    lines = [
        f"Input: {', '.join(g['input'])} ({g['posts']:,} posts accepted; {g['edges']:,} edges, "
        f"{g['nodes']['user']:,} users, {g['nodes']['hashtag']:,} hashtags). "
        f"`spark_edges_equal`: **{str(r.get('spark_edges_equal')).lower()}**.",
        "",
        "| engine | wall s | `/usr/bin/time` max RSS (MB) | peak RSS, process tree (MB) "
        "| equal to DuckDB | load (1, 5, 15 min) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("duckdb", "DuckDB"),
        ("spark_local1", "Spark local[1]"),
        ("spark_local2", "Spark local[2]"),
    ):
        x = g[name]
        cmp = x.get("vs_duckdb")
        if cmp is None:
            same = "-"
        else:
            ok = all(cmp["files_equal"].values()) and cmp["edge_multiset_equal"]
            same = "yes" if ok and not cmp["stats_differ_in"] else "NO"
        lines.append(
            f"| {label} | {x['wall_s']:,.1f} | {x['peak_rss_largest_process_mb']:,} | "
            f"{x['peak_rss_tree_mb']:,} | {same} | {_load(x['uptime'])} |"
        )
    lines += [
        "",
        "For Spark, `/usr/bin/time` sees the Python driver only (not the JVM it starts); the "
        "process tree (driver, JVM, Python workers, sampled every 0.2 s) is the figure to read.",
    ]
    lines += ["", "```"] + [g[n]["command"] for n in ("duckdb", "spark_local1", "spark_local2")]
    lines += ["```"]
    return "\n".join(lines)


def embed_block(r: dict) -> str:
    if "embed" not in r:
        return "Not measured yet."
    e = r["embed"]
    lines = [
        f"{e['posts']:,} posts, {e['dtype']}, model {e['model']}; union of the parts equal to "
        f"the single output: **{str(e['union_equal']).lower()}** (max abs difference "
        f"{e['max_abs_diff']:.1e}); torch threads: {e['torch_threads']['1proc']} for one "
        f"process, {e['torch_threads']['2proc']} for two.",
        "",
        "| processes | wall s | peak RSS, largest process (MB) | peak RSS, process tree (MB) "
        "| load (1, 5, 15 min) |",
        "|---|---|---|---|---|",
    ]
    for n in (1, 2):
        x = e[f"{n}proc"]
        lines.append(
            f"| {n} | {x['wall_s']:,.1f} | {x['peak_rss_largest_process_mb']:,} | "
            f"{x['peak_rss_tree_mb']:,} | {_load(x.get('uptime', ''))} |"
        )
    lines += ["", "```", e["1proc"]["command"], e["2proc"]["command"], "```"]
    return "\n".join(lines)


def kge_block(r: dict) -> str:
    k = r["kge"]
    lines = [
        "| processes | MRR (overall) | edges/s | train / wall s | peak RSS per process (MB) "
        "| rows held | MB sent per rank | load (1, 5, 15 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in (1, 2):
        x = k[f"{n}proc"]
        rows = (
            "; ".join(
                f"rank {i}: "
                + ", ".join(f"{t} {v:,}/{x['table_rows'][t]:,}" for t, v in rr.items())
                for i, rr in enumerate(x["rows_per_rank"])
            )
            if x["rows_per_rank"]
            else "whole tables"
        )
        lines.append(
            f"| {n} | {x['mrr']:.4f} | {x['edges_per_s']:,} ({x['compute_dtype']}, "
            f"{x['threads_per_process']} thread(s) each) | {x['train_s']:,.0f} / "
            f"{x['wall_s']:,.0f} | {_mb(x['peak_rss_mb_per_process'])} | {rows} | "
            f"{_mb(x['comm_mb_per_rank'])} | {_load(x['uptime'])} |"
        )
    lines += [
        "",
        f"MRR relative difference {k['mrr_rel_diff']:.2e}; 2 processes reach "
        f"{k['speed_ratio_2proc_vs_1proc']:.2f}x the edges/s of one.",
        "",
        "```",
        k["1proc"]["command"],
        k["2proc"]["command"],
        "```",
    ]
    return "\n".join(lines)


def kge_pbg_block(r: dict) -> str:
    if "kge_pbg" not in r:
        return "Not measured yet."
    k = r["kge_pbg"]
    lines = [
        "| run | MRR (overall) | edges/s | train / wall s | peak RSS per process (MB) "
        "| held per rank | load (1, 5, 15 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "ours_1proc": "ours, 1 process",
        "ours_2proc": "ours, 2 ranks (row-wise)",
        "pbg_1proc_p1": "PBG, 1 process, P=1",
        "pbg_1proc_p2": "PBG, 1 process, P=2",
        "pbg_2proc_p2": "PBG, 2 ranks, P=2",
    }
    for name, label in labels.items():
        x = k["runs"][name]
        if "holdings" in x:
            rss = "; ".join(
                f"rank {p['rank']}: trainer {p['trainer_peak_rss_mb']:,.0f} + "
                f"{p['helper_processes']} helpers ({_mb(p['helper_peak_rss_mb'])})"
                for p in x["processes"]
            )
            held = "; ".join(
                f"rank {h['rank']}: buckets {' '.join(f'({a},{b})' for a, b in h['buckets_trained'])}"
                + ", at once "
                + ", ".join(
                    f"{t} {v:,}/{h['table_rows'][t]:,}"
                    for t, v in h["trainer_rows_at_once_max"].items()
                )
                + (
                    f", partition server {h['partition_server_partitions']}"
                    if h["partition_server_partitions"]
                    else ""
                )
                for h in x["holdings"]
            )
            dtype = f"float32, {x['pbg_workers_per_rank']} HOGWILD worker(s) per rank"
        else:
            rss = _mb(x["peak_rss_mb_per_process"])
            rows = [rr for rr in x["rows_per_rank"] if rr]
            held = (
                "; ".join(f"rank {i}: " + ", ".join(f"{t} {v:,}" for t, v in rr.items())
                          for i, rr in enumerate(rows))
                if rows
                else "whole tables"
            )  # fmt: skip
            dtype = f"{x['compute_dtype']}, {x['threads_per_process']} thread(s) each"
        mrr = f"{x['mrr']:.4f}"
        if "mrr_min" in x:
            mrr += f" ({x['mrr_min']:.4f}-{x['mrr_max']:.4f}, mean of {len(x['repeats'])})"
        lines.append(
            f"| {label} | {mrr} | {x['edges_per_s']:,.0f} ({dtype}) | "
            f"{x['train_s']:,.0f} / {x['wall_s']:,.0f} | {rss} | {held} | {_load(x['uptime'])} |"
        )
    lines += [
        "",
        "MRR relative difference, PBG 2 ranks vs 1 process: "
        f"{k['mrr_rel_diff_pbg_2proc_vs_1proc_same_p']:.1%} at the same P=2, "
        f"{k['mrr_rel_diff_pbg_2proc_vs_1proc_p1']:.1%} against P=1; PBG 1 process vs ours: "
        f"{k['mrr_rel_diff_pbg_1proc_vs_ours_1proc']:+.1%}. Edges/s: PBG 2 ranks "
        f"{k['speed_ratio_pbg_2proc_vs_1proc']:.2f}x PBG 1 process, "
        f"{k['speed_ratio_pbg_2proc_vs_ours_2proc']:.2f}x ours 2 ranks; PBG 1 process "
        f"{k['speed_ratio_pbg_1proc_vs_ours_1proc']:.2f}x ours 1 process.",
        "",
        "```",
        *(k["runs"][name]["command"] for name in labels),
        "```",
    ]
    return "\n".join(lines)


def _finetune_table(f: dict, title: str) -> list[str]:
    lines = [
        f"**{title}**, {f['1proc']['steps']} steps: max per-step loss difference "
        f"{f['max_loss_diff']:.2e}"
        + (
            f" (tolerance {f['tolerance']:g}: "
            f"{'within' if f['within_tolerance'] else 'NOT within'})"
            if "tolerance" in f
            else ""
        )
        + f"; 2 processes {f['speed_ratio_2proc_vs_1proc']:.2f}x the tokens/s of one.",
        "",
        "| processes | tokens/s | train / wall s | peak RSS per process (MB) | held-out bits "
        "| load (1, 5, 15 min) |",
        "|---|---|---|---|---|---|",
    ]
    for n in (1, 2):
        x = f[f"{n}proc"]
        bits = x["eval_bits"][-1] if isinstance(x["eval_bits"], list) else x["eval_bits"]
        lines.append(
            f"| {n} | {x['tokens_per_s']:,.0f} ({x['train_dtype']}) | {x['train_s']:,.0f} / "
            f"{x['wall_s']:,.0f} | {_mb(x['peak_rss_mb_per_process'])} | {bits:.4f} | "
            f"{_load(x['uptime'])} |"
        )
    lines += ["", "```", f["1proc"]["command"], f["2proc"]["command"], "```", ""]
    return lines


def finetune_block(r: dict) -> str:
    lines: list[str] = []
    if "finetune_dropout0" in r:
        lines += _finetune_table(r["finetune_dropout0"], r["finetune_dropout0"]["backbone"])
    lines += _finetune_table(r["finetune"], r["finetune"]["backbone"])
    if "tiny_bert" in r["finetune"]:
        lines += _finetune_table(r["finetune"]["tiny_bert"], r["finetune"]["tiny_bert"]["backbone"])
    return "\n".join(lines).rstrip()


def cost_block() -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cost_model.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "\n".join(line for line in out.strip().splitlines() if not line.startswith("{"))


def blocks() -> dict[str, str]:
    r = json.loads(RESULTS.read_text())
    return {
        "graph": graph_block(r),
        "embed": embed_block(r),
        "kge": kge_block(r),
        "kge_pbg": kge_pbg_block(r),
        "finetune": finetune_block(r),
        "cost": cost_block(),
    }


def pattern(name: str) -> re.Pattern:
    return re.compile(
        rf"(<!-- scale_tables:{name} -->\n)(.*?)(\n<!-- /scale_tables:{name} -->)", re.S
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="replace the blocks in docs/scale.md")
    args = ap.parse_args()
    b = blocks()
    if not args.write:
        for name, text in b.items():
            print(f"<!-- scale_tables:{name} -->\n{text}\n<!-- /scale_tables:{name} -->\n")
        return
    doc = DOC.read_text()
    for name, text in b.items():
        doc, n = pattern(name).subn(lambda m, t=text: m[1] + t + m[3], doc)
        if n != 1:
            raise SystemExit(f"docs/scale.md: block {name!r} found {n} times (expected once)")
    DOC.write_text(doc)


if __name__ == "__main__":
    main()
