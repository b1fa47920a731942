"""``ntulm evaluate``: downstream tasks, overlap analysis and the report for saved models."""

from __future__ import annotations

import argparse
from pathlib import Path

from ntulm.cli import add_config_args, add_posts_args, read_overrides
from ntulm.cli.run import add_prune_arg


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ntulm.cli.run import print_summary
    from ntulm.pipeline.evaluate import evaluate_config, evaluate_saved, parse_model_args

    models = parse_model_args(args.model)
    overrides = list(args.overrides) + read_overrides(args)
    if args.seeds:
        overrides.append("seeds=[" + ",".join(str(s) for s in args.seeds) + "]")
    cfg = evaluate_config(
        models,
        file=args.config,
        overrides=overrides,
        posts=args.posts,
        baseline=args.baseline,
        post_concat_of=args.post_concat,
    )
    results = evaluate_saved(
        cfg,
        models,
        args.out,
        ntu=args.ntu,
        progress=args.progress,
        prune_embeddings=args.prune_embeddings,
    )
    print_summary(results, Path(args.out))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate fine-tuned models on downstream tasks (MLP on frozen embeddings) + report",
        description="Evaluate saved `ntulm finetune` models with the paper's protocol: the tasks "
        "of the config's `eval` section (an `ntulm run` config works), a 2-layer MLP per task and "
        "seed on frozen post embeddings, overlap / non-overlap metrics and % change against the "
        "baseline; writes report.md, PNG figures and results.json to --out.",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a model directory from `ntulm finetune` and its name in the report (repeatable)",
    )
    p.add_argument("--out", required=True, help="output directory")
    add_posts_args(p, required=False, help="corpus for the classification/retrieval tasks")
    p.add_argument(
        "--baseline", help="model the %% changes are measured against (default: first no-NTU)"
    )
    p.add_argument(
        "--post-concat",
        metavar="NAME",
        help="also evaluate BERT-post-concat: the named no-NTU model's embedding + e_ntu",
    )
    p.add_argument("--ntu", help="NTU embeddings directory for --post-concat and the overlap flags")
    p.add_argument("--seeds", type=int, nargs="+", help="MLP seeds (default: the config's)")
    add_prune_arg(p)
    add_config_args(p)
    p.set_defaults(func=cmd_evaluate)
