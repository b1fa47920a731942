"""``ntulm run``: every stage from one config, reusing finished stages."""

from __future__ import annotations

import argparse
from pathlib import Path

from ntulm.cli import add_config_args
from ntulm.errors import ConfigError


def cmd_run(args: argparse.Namespace) -> int:
    from ntulm.pipeline import PipelineConfig, run_pipeline

    if args.config is None:
        raise ConfigError(
            "--config FILE is required (see benchmarks/paper_cpu.yaml for an example)"
        )
    cfg = PipelineConfig.from_sources(args.config, args.overrides)
    results = run_pipeline(
        cfg, args.out, progress=args.progress, prune_embeddings=args.prune_embeddings
    )
    print_summary(results, Path(args.out))
    return 0


def print_summary(results: dict, out: Path) -> None:
    st = results["stages"]
    print(
        f"stages run: {', '.join(st['ran']) or 'none'}; reused: {', '.join(st['reused']) or 'none'}"
    )
    print((out / "report.md").read_text(encoding="utf-8").split("## Table 3")[0].strip())
    print(f"\nreport: {out / 'report.md'}  (all numbers: {out / 'results.json'})")


def add_prune_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prune-embeddings",
        action="store_true",
        help="after the run, delete the cached post embeddings under OUT/embeddings that this "
        "run did not use (other settings', models' or seeds'); the cache otherwise keeps them all",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="graph -> NTU embeddings -> fine-tuning -> post embeddings -> evaluation -> report",
        description="Run the whole method from one YAML config (sections graph, kge, lm, eval; "
        "posts, variants, seeds). Stages finished with the same config are reused.",
    )
    p.add_argument("--out", required=True, help="output directory")
    add_prune_arg(p)
    add_config_args(p)
    p.set_defaults(func=cmd_run)
