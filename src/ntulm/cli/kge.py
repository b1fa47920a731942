"""``ntulm train-kge``: NTU embeddings from a graph artifact (paper §3.1)."""

from __future__ import annotations

import argparse

from ntulm.cli import add_config_args
from ntulm.kge.config import KGEConfig


def cmd_train_kge(args: argparse.Namespace) -> int:
    from ntulm.kge.train import train_kge  # torch is imported only when the command runs

    config = KGEConfig.from_sources(args.config, args.overrides)
    emb, metrics = train_kge(
        args.graph,
        args.out,
        config,
        resume=args.resume,
        progress=not args.quiet,
        evaluate=not args.no_eval,
    )
    tr = metrics["train"]
    rate = f"{tr['edges_per_s']:,.0f} edges/s" if tr["edges_per_s"] else "no training steps"
    print(
        f"trained {tr['epochs']} epochs on {tr['edges']:,} edges ({rate}); "
        f"tables: " + ", ".join(f"{t} {a.shape[0]:,}x{a.shape[1]}" for t, a in emb.tables.items())
    )
    if "link_prediction" in metrics:
        lp, rb = metrics["link_prediction"], metrics["random_baseline"]
        print(f"link prediction on {tr['held_out_edges']:,} held-out edges ({lp['protocol']}):")
        for name, m in lp.items():
            if isinstance(m, dict):
                print(
                    f"  {name:14s} MRR {m['mrr']:.4f}  Hits@1 {m['hits@1']:.4f}  "
                    f"Hits@10 {m['hits@10']:.4f}  Hits@50 {m['hits@50']:.4f}  "
                    f"(random: MRR {rb[name]['mrr']:.4f}, Hits@10 {rb[name]['hits@10']:.4f})"
                )
    print(f"-> {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-kge",
        help="train TwHIN-style NTU embeddings on a graph artifact",
        description="Train user/hashtag embeddings with f(u, r, v) = u·(v + r) and negative "
        "sampling (paper §3.1). Config keys:\n" + KGEConfig.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--graph", required=True, metavar="DIR", help="graph artifact (build-graph)")
    p.add_argument("--out", required=True, metavar="DIR", help="output artifact directory")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip link-prediction evaluation")
    add_config_args(p)
    p.set_defaults(func=cmd_train_kge)
