"""``ntulm finetune`` (MLM fine-tuning of NTULM or its no-NTU baseline) and ``ntulm embed``
(post embeddings to Parquet)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ntulm.cli import (
    add_config_args,
    add_nproc_arg,
    add_posts_args,
    reader_config,
    relaunch_under_torchrun,
)
from ntulm.errors import ArtifactError, ConfigError
from ntulm.lm.config import LMConfig, resolve_device
from ntulm.lm.shards import quarantine_beside
from ntulm.posts import Post, PostReader
from ntulm.posts.readers import no_posts_error, require_posts


def _load_ntu(path: str | None):  # noqa: ANN202 - NTUEmbeddings | None
    if path is None:
        return None
    if not Path(path).is_dir():
        raise ArtifactError(
            f"--ntu {path}: no such directory (expected NTU embeddings from `ntulm train-kge`)"
        )
    from ntulm.artifacts import require_done
    from ntulm.kge import NTUEmbeddings

    return NTUEmbeddings.load(require_done(path, "kge", "--ntu"))


def _sample(reader: PostReader, paths: list[str], cfg: LMConfig) -> Iterator[tuple[Post, str]]:
    """Posts read, each kept with probability ``sample_rate`` (seeded), at most ``max_posts``."""
    rng = np.random.default_rng([cfg.seed, 1])
    kept = 0
    limit = cfg.max_posts if cfg.sample_rate >= 1.0 else 0  # a few posts: streamed (iter_posts)
    for post, src in reader.iter_posts(paths, limit=limit):
        if cfg.sample_rate < 1.0 and rng.random() >= cfg.sample_rate:
            continue
        yield post, src
        kept += 1
        if cfg.max_posts and kept >= cfg.max_posts:
            return


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.lean_memory:
        from ntulm.memory import tune_allocator

        tune_allocator()  # before the first tensor (ntulm.memory)
    status = relaunch_under_torchrun(args)
    if status is not None:
        return status
    from ntulm.lm.train import _rank_world, finetune

    read, overrides = reader_config(args)
    if args.no_ntu:
        overrides.append("use_ntu=false")
    if not args.progress:
        overrides.append("progress=false")
    cfg = LMConfig.from_sources(args.config, overrides)
    if cfg.use_ntu and not args.ntu:
        raise ConfigError("--ntu DIR is required (or --no-ntu for the baseline without NTUs)")
    ntu = _load_ntu(args.ntu)
    # every rank reads the posts; rank 0 keeps the quarantine
    reader = read.reader(Path(args.out) / "rejected.jsonl" if _rank_world()[0] == 0 else None)
    posts = [p for p, _ in _sample(reader, args.posts, cfg)]
    if not reader.report.accepted:
        raise no_posts_error(reader.report, args.posts)
    if len(posts) < 2:
        kept = f"{len(posts)} post(s) kept"
        if reader.report.accepted > len(posts):  # the sample, not the input, is too small
            kept += f" of {reader.report.accepted:,} accepted (sample_rate, max_posts)"
        raise no_posts_error(reader.report, args.posts, f"{kept}; fine-tuning needs at least 2")
    res = finetune(posts, cfg, args.out, ntu=ntu, resume=args.resume)
    if _rank_world()[0] != 0:  # data-parallel: rank 0 reports
        return 0
    print(
        f"{'NTULM' if cfg.use_ntu else 'no-NTU baseline'}: {res.n_train:,} training posts, {res.n_eval:,} held out, "
        f"{res.steps:,} steps, {res.epochs} epoch(s), {res.tokens_per_s:,.0f} tokens/s"
        + (f" ({res.world_size} processes)" if res.world_size > 1 else "")
    )
    print(
        f"held-out perplexity: {res.best_eval_bits:.4f} bits (before fine-tuning {res.initial_eval_bits:.4f}) -> {args.out}"
    )
    return 0


def _embed_sharded(args: argparse.Namespace) -> int:
    from ntulm.lm.shards import embed_shard, embed_sharded, parse_shard

    read, _ = reader_config(args)
    options = {
        "batch_size": args.batch_size,
        "concat_ntu": args.concat_ntu,
        "concat_types": args.concat_ntu_types,
        "concat_per_type": args.concat_per_type,
        "concat_scale": args.concat_scale,
        "show_progress_bar": not args.quiet,
        "dtype": args.dtype,
        "pooling": args.pooling,
        "compile": args.compile,
    }
    if not Path(args.model).is_dir():
        raise ArtifactError(f"--model {args.model}: no such directory")
    if args.ntu is not None and not Path(args.ntu).is_dir():
        raise ArtifactError(f"--ntu {args.ntu}: no such directory")
    common = {
        "reader": read.model_dump(mode="json"),
        "limit": args.limit,
        "device": args.device,
        **options,
    }
    if args.shard:
        index, count = parse_shard(args.shard)
        done = [embed_shard(args.model, args.ntu, args.posts, args.out, index, count, **common)]
    else:
        if args.nproc < 1:
            raise ConfigError(f"--nproc {args.nproc}: needs at least 1")
        done = embed_sharded(args.model, args.ntu, args.posts, args.out, args.nproc, **common)
    n = sum(d["posts"] for d in done)
    print(f"{n:,} post embeddings in {len(done)} shard(s) -> {args.out}/")
    print(json.dumps({"posts": done[0]["read"], "rejected": done[0]["rejected"]}))
    return 0


def _types_list(value: str) -> list[str]:
    from ntulm.posts.ntus import check_ntu_types

    try:
        return check_ntu_types([t.strip() for t in value.split(",") if t.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str, least: int = 1) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"{n}: needs at least {least}")
    return n


def _count(value: str) -> int:
    """A whole number of at least 0 (``--limit``: 0 means all)."""
    return _positive(value, least=0)


def _scale_map(value: str) -> dict[str, float]:
    """``"hashtag=0.1,author=1"`` -> ``{"hashtag": 0.1, "author": 1.0}``."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, eq, weight = part.partition("=")
        usage = f"{part!r}: expected TYPE=WEIGHT, e.g. hashtag=0.1"
        if not eq or not name.strip() or "," in name:
            raise argparse.ArgumentTypeError(usage)
        try:
            w = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(usage) from None
        out[_types_list(name)[0]] = w  # an unknown type: its own message
    return out


def cmd_embed(args: argparse.Namespace) -> int:
    if args.shard or args.nproc:
        return _embed_sharded(args)
    from ntulm.artifacts import require_done
    from ntulm.lm.encode import embed_to_parquet
    from ntulm.lm.model import NTULM, STAGE

    require_done(args.model, STAGE, "--model")  # not a fine-tune killed after an epoch
    model = NTULM.load(args.model, ntu=_load_ntu(args.ntu))
    model.to(resolve_device(args.device, "--device"))
    if args.concat_ntu and model.ntu is None:
        raise ConfigError("--concat-ntu needs NTU embeddings (--ntu DIR)")
    read, _ = reader_config(args)
    reader = read.reader(quarantine_beside(args.out))
    stream = reader.iter_posts(args.posts, limit=args.limit)
    stream = require_posts(stream, reader, args.posts)  # none: no output
    n = embed_to_parquet(
        model,
        stream,
        args.out,
        batch_size=args.batch_size,
        concat_ntu=args.concat_ntu,
        concat_types=args.concat_ntu_types,
        concat_per_type=args.concat_per_type,
        concat_scale=args.concat_scale,
        show_progress_bar=args.progress,  # (the stream stops at --limit: iter_posts)
        dtype=args.dtype,
        pooling=args.pooling,
        compile=args.compile,
    )
    print(f"{n:,} post embeddings -> {args.out}")
    print(
        json.dumps({"posts": reader.report.to_json()["read"], "rejected": reader.report.rejected})
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ntulm.lm.export import export_model

    out = export_model(args.model, args.out, args.format)
    print(
        f"{out}: a sentence-transformers model of the TEXT PATH of {args.model} (encoder + mean "
        "pooling over the word pieces; no NTU token, so not the NTULM embedding). "
        f"Load it with SentenceTransformer({str(out)!r}); {out}/README.md says more."
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="MLM fine-tuning of the NTU-enriched LM (or the no-NTU baseline)",
        description="Fine-tune a BERT-style masked LM with the NTU token (paper §3.2). Config keys:\n"
        + LMConfig.help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_posts_args(p)
    p.add_argument("--ntu", help="NTU embeddings directory (from train-kge)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument(
        "--no-ntu", action="store_true", help="the 'BERT' baseline: same training, no NTU token"
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--lean-memory",
        action="store_true",
        help="map large buffers and cap oneDNN's kernel cache: about 0.9 GB less resident "
        "memory, the same weights, about 1.2x the time (ntulm.memory.tune_allocator)",
    )
    add_nproc_arg(p, "data-parallel fine-tuning (DistributedDataParallel)")
    add_config_args(p)
    p.set_defaults(func=cmd_finetune)

    e = sub.add_parser(
        "embed",
        help="post embeddings (id, embedding, overlap) to Parquet, streaming",
        description="Mean-pooled final hidden states incl. the NTU token (paper §3.3), streamed to Parquet.",
    )
    add_posts_args(e)
    e.add_argument("--model", required=True, help="model directory from finetune")
    e.add_argument(
        "--out",
        required=True,
        help="output .parquet file; with --shard/--nproc a directory of part-<i>-of-<N>.parquet",
    )
    e.add_argument(
        "--ntu", help="NTU embeddings directory (default: the copy saved with the model)"
    )
    e.add_argument(
        "--concat-ntu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--concat-ntu appends the post's e_ntu, the mean of the model's NTU types "
        "(author+hashtag for a no-NTU model: the paper's BERT-post-concat); --no-concat-ntu "
        "appends nothing (the paper's embedding); default: the recommended embedding, the "
        "post author's NTU vector appended where the model carries NTU embeddings with users "
        "(benchmarks/results/fusion/final_author), else e_ntu for an NTULM with one mean vector",
    )
    e.add_argument(
        "--concat-ntu-types",
        type=_types_list,
        default=None,
        metavar="TYPES",
        help="the NTU types averaged into the appended vector, comma-separated, e.g. "
        "'author,hashtag' (default: author; docs/lm.md)",
    )
    e.add_argument(
        "--concat-per-type",
        action="store_true",
        help="with --concat-ntu-types: append each type's vector side by side (K x NTU dim) "
        "instead of their mean, e.g. the author's and the hashtags' kept apart",
    )
    e.add_argument(
        "--concat-scale",
        type=_scale_map,
        default=None,
        metavar="TYPE=W,...",
        help="with --concat-ntu-types: multiply a type's appended block by W, e.g. "
        "'hashtag=0.1' with 'author,hashtag' and --concat-per-type (the option for hashtag "
        "retrieval, docs/lm.md); changes cosine rankings, not a standardizing classifier's input",
    )
    e.add_argument(
        "--batch-size",
        type=_positive,
        default=128,
        help="posts per encoder batch (default 128: 1.055x over 64 for the compiled bf16 "
        "encoder, 1.02x without compile; benchmarks/results/embed_batch_sizes*.json)",
    )
    e.add_argument(
        "--limit",
        type=_count,
        default=0,
        help="stop after N posts (0: all); below 50,000 files stream through the reference "
        "parser, so the first posts come without parsing a whole file",
    )
    e.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="float32",
        help="encoder precision; bfloat16 autocast is about 3x faster on CPUs with native bf16 "
        "(auto: bfloat16 where the CPU has it natively)",
    )
    e.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the encoder runs: auto is the first CUDA GPU where torch sees one, else the "
        "CPU (with --nproc, every shard process on that device)",
    )
    e.add_argument(
        "--compile",
        action="store_true",
        help="run the encoder under torch.compile (eager attention, inductor): 1.2x faster "
        "encoder loop in bf16 on a 2-core AVX-512 CPU (benchmarks/encode_variants.py; less end "
        "to end, where reading and tokenizing add their time); needs a C++ compiler, compiles "
        "once per process; embeddings equal up to bf16 rounding",
    )
    e.add_argument(
        "--pooling",
        choices=("mean", "mean+ntu", "gate"),
        default="mean",
        help="mean: the paper's mean over word pieces and the NTU token; mean+ntu: [word-piece "
        "mean ; NTU token state], 2x wide, keeps the NTU signal undiluted (NTULM models only); "
        "gate: the learned gate of a model fine-tuned with pooling_gate",
    )
    shard = e.add_mutually_exclusive_group()
    shard.add_argument(
        "--shard",
        metavar="i/N",
        help="embed only shard i of N (every N-th post from the i-th) into --out DIR; run the N "
        "shards anywhere (SLURM array, Kubernetes indexed job); their union is the whole output",
    )
    shard.add_argument(
        "--nproc",
        type=int,
        default=0,
        metavar="N",
        help="run all N shards in N processes on this machine, the cores split between them",
    )
    e.set_defaults(func=cmd_embed)

    x = sub.add_parser(
        "export",
        help="a model's text path as a sentence-transformers directory (no NTU token)",
        description="Write the text path of a fine-tuned model (the encoder without the NTU token, "
        "mean pooling over the word pieces) as a sentence-transformers model directory. Other "
        "libraries cannot compute the NTU token: the export gives the vectors of "
        "encode(texts, text_only=True), not the NTULM embedding.",
    )
    x.add_argument("--model", required=True, help="model directory from finetune")
    x.add_argument("--out", required=True, help="output directory (new or empty)")
    x.add_argument(
        "--format",
        choices=("sentence-transformers",),
        default="sentence-transformers",
        help="export format (default: sentence-transformers)",
    )
    x.set_defaults(func=cmd_export)
