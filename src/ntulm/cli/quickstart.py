"""``ntulm quickstart``: the whole pipeline on a generated synthetic corpus, in a few minutes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ntulm.cli import add_config_args
from ntulm.synthetic import write_corpus


def quickstart_config(posts: Path) -> dict[str, Any]:
    """Small settings for 2 CPU cores (about a minute): every stage, the paper's five model
    columns, two MLP seeds. Enough to show the planted structure: NTULM and BERT-post-concat
    beat BERT on the community task, whose label follows the author."""
    return {
        "name": "quickstart (synthetic corpus)",
        "posts": [str(posts)],
        "lm_posts": 600,
        "kge": {
            "dimension": 64,
            "num_epochs": 10,
            "batch_size": 2000,
            "num_batch_negs": 50,
            "num_uniform_negs": 50,
        },
        "lm": {
            "max_steps": 8,
            "max_epochs": 1,
            "batch_size": 16,
            "head_warmup_steps": 8,
            "max_length": 32,
            "eval_max_posts": 100,
        },
        "eval": {
            "embed_batch_size": 128,
            "embed_dtype": "auto",  # bf16 autocast where the CPU has native bf16 (3x faster)
            "mlp": {"max_epochs": 30, "num_threads": 1},
            "tasks": [
                {
                    "type": "classification",
                    "name": "community",
                    "label": "community",
                    "split_by": "author",
                },
                {"type": "classification", "name": "stance", "label": "stance"},
                # a small corpus: about a third of the top 30 hashtags have 12 usable posts
                {"type": "hashtag", "top_k": 30, "per_class": 12, "min_classes": 5},
                {
                    "type": "retrieval",
                    "name": "community_map",
                    "label": "community",
                    "max_test": 200,
                },
            ],
        },
        "seeds": [1, 2],
        # tiny models: one process is quicker than a worker start-up per fine-tune and encoding
        "isolate_stages": False,
    }


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ntulm.cli.run import print_summary
    from ntulm.pipeline import PipelineConfig, run_pipeline

    out = Path(args.out)
    print(f"ntulm quickstart: writing to {out.resolve()}")
    # Words only half from the community's vocabulary: the text alone leaves room for the NTUs.
    posts = write_corpus(out / "posts.jsonl.gz", n_posts=args.posts, purity=0.5, seed=args.seed)
    print(f"synthetic corpus (generated, not real data): {args.posts:,} posts -> {posts}")
    cfg = PipelineConfig.from_sources(args.config, args.overrides, base=quickstart_config(posts))
    results = run_pipeline(cfg, out / "run", progress=args.progress)
    print_summary(results, out / "run")
    print(f"everything this quickstart wrote is under {out.resolve()} (delete it when done)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="the whole pipeline on a generated synthetic corpus")
    p.add_argument(
        "--out", default="ntulm-quickstart", help="output directory (default: ./ntulm-quickstart)"
    )
    p.add_argument("--posts", type=int, default=1200, help="number of synthetic posts")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    add_config_args(p)
    p.set_defaults(func=cmd_quickstart)
