"""``ntulm train-kge``: NTU embeddings from a graph artifact (paper §3.1)."""

from __future__ import annotations

import argparse

from ntulm.cli import add_config_args, relaunch_under_torchrun
from ntulm.errors import ConfigError
from ntulm.kge.config import KGEConfig


def cmd_train_kge(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"engine={args.engine}"] if args.engine else [])
    config = KGEConfig.from_sources(args.config, overrides)
    pbg = config.engine == "pbg"  # PBG starts its own rank processes: no torchrun
    status = None if pbg else relaunch_under_torchrun(args)
    if status is not None:
        return status
    if args.nproc < 1:
        raise ConfigError(f"--nproc: {args.nproc} is not a positive number of processes")
    from ntulm.kge.evaluate import MIN_RELIABLE_EDGES
    from ntulm.kge.train import train_kge  # torch is imported only when the command runs

    emb, metrics = train_kge(
        args.graph,
        args.out,
        config,
        resume=args.resume,
        progress=args.progress,
        evaluate=not args.no_eval,
        nproc=args.nproc if pbg else 1,
    )
    if emb is None:  # a rank other than 0 of a sharded run: rank 0 reports
        return 0
    tr = metrics["train"]
    rate = f"{tr['edges_per_s']:,.0f} edges/s" if tr["edges_per_s"] else "no training steps"
    print(
        f"trained {tr['epochs']} epochs on {tr['edges']:,} edges ({rate}); "
        f"tables: " + ", ".join(f"{t} {a.shape[0]:,}x{a.shape[1]}" for t, a in emb.tables.items())
    )
    if "distributed" in metrics:
        for r in metrics["distributed"]["ranks"]:
            rows = ", ".join(f"{t} {n:,}/{r['table_rows'][t]:,}" for t, n in r["rows"].items())
            print(f"  rank {r['rank']}: rows {rows}; peak RSS {r['peak_rss_mb']:,.0f} MB")
    if "pbg" in metrics:
        for h, pr in zip(metrics["pbg"]["holdings"], metrics["pbg"]["processes"], strict=True):
            held = ", ".join(
                f"{t} {n:,}/{h['table_rows'][t]:,}"
                for t, n in h["trainer_rows_at_once_max"].items()
            )
            served = ", ".join(f"{t} {n:,}" for t, n in h["partition_server_rows"].items())
            print(
                f"  PBG rank {h['rank']}: buckets {h['buckets_trained']}; trainer held at most "
                f"{held} rows at once; partition server {h['partition_server_partitions']} "
                f"({served} rows); peak RSS trainer {pr['trainer_peak_rss_mb']:,.0f} MB, "
                f"{pr['helper_processes']} helper processes"
            )
    if "link_prediction" in metrics:
        lp, rb = metrics["link_prediction"], metrics["random_baseline"]
        print(f"link prediction on {tr['held_out_edges']:,} held-out edges ({lp['protocol']}):")
        for name, m in lp.items():
            if isinstance(m, dict):
                few = " (few: unreliable)" if m.get("edges", 0) < MIN_RELIABLE_EDGES else ""
                print(
                    f"  {name:14s} n={m.get('edges', 0):,}{few}  MRR {m['mrr']:.4f}  "
                    f"Hits@1 {m['hits@1']:.4f}  Hits@10 {m['hits@10']:.4f}  "
                    f"Hits@50 {m['hits@50']:.4f}  "
                    f"(random: MRR {rb[name]['mrr']:.4f}, Hits@10 {rb[name]['hits@10']:.4f})"
                )
        for warning in lp.get("warnings", []):
            print(f"  warning: {warning}")
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
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="N processes on this machine: engine=ntulm shards the tables row-wise, started by "
        "torchrun (gloo); engine=pbg runs N ranks of PBG's distributed mode (PBG starts its "
        "own servers). Several machines: docs/scale.md",
    )
    p.add_argument(
        "--engine",
        choices=["ntulm", "pbg"],
        help="trainer (the config key engine): ntulm (default) or pbg (PyTorch-BigGraph, "
        "partitioned; pbg_partitions=P)",
    )
    add_config_args(p)
    p.set_defaults(func=cmd_train_kge)
