"""``ntulm quickstart``: the whole pipeline on a generated synthetic corpus, in a few minutes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ntulm.cli import add_config_args
from ntulm.synthetic import write_corpus


def quickstart_config(posts: Path) -> dict[str, Any]:
    """Small settings for 2 CPU cores: every stage, every model variant, two seeds."""
    return {
        "name": "quickstart (synthetic corpus)",
        "posts": [str(posts)],
        "lm_posts": 1500,
        "kge": {"num_epochs": 10, "batch_size": 2000, "num_batch_negs": 50, "num_uniform_negs": 50},
        "lm": {
            "max_steps": 40,
            "max_epochs": 1,
            "batch_size": 32,
            "head_warmup_steps": 30,
            "max_length": 48,
        },
        "eval": {
            "mlp": {"max_epochs": 50},
            "tasks": [
                {
                    "type": "classification",
                    "name": "community",
                    "label": "community",
                    "split_by": "author",
                },
                {"type": "classification", "name": "stance", "label": "stance"},
                {"type": "hashtag", "top_k": 40, "per_class": 15},
                {
                    "type": "retrieval",
                    "name": "community_map",
                    "label": "community",
                    "max_test": 300,
                },
            ],
        },
        "seeds": [1, 2],
    }


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ntulm.cli.run import print_summary
    from ntulm.pipeline import PipelineConfig, run_pipeline

    out = Path(args.out)
    # Words only half from the community's vocabulary: the text alone leaves room for the NTUs.
    posts = write_corpus(out / "posts.jsonl.gz", n_posts=args.posts, purity=0.5, seed=args.seed)
    print(f"synthetic corpus (generated, not real data): {args.posts:,} posts -> {posts}")
    cfg = PipelineConfig.from_sources(args.config, args.overrides, base=quickstart_config(posts))
    results = run_pipeline(cfg, out / "run", progress=not args.quiet)
    print_summary(results, out / "run")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="the whole pipeline on a generated synthetic corpus")
    p.add_argument(
        "--out", default="ntulm-quickstart", help="output directory (default: ./ntulm-quickstart)"
    )
    p.add_argument("--posts", type=int, default=2000, help="number of synthetic posts")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    add_config_args(p)
    p.set_defaults(func=cmd_quickstart)
