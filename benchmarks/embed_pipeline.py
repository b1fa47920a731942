"""Benchmark: ``ntulm embed``'s work around the encoder, before and after the reading pipeline of
issue 12, side by side on the same IRA posts, model, threads and dtype.

``embed`` spent about 40% of the whole IRA corpus's 29.6 min outside the encoder (reading rows in
Python, tokenizing, NTU lookups, Parquet), one after the other with it. Three configurations of
``embed_to_parquet`` over the first ``--posts`` posts of one IRA file, each in rounds, interleaved:

- ``before``: the reference reader (``engine="python"``: a Python parse per CSV row), the
  transformers tokenizer call, no prefetch: what ``embed`` did before;
- ``fast_serial``: the fast reader's tables turned into posts (``PostReader.iter_posts`` with
  ``engine="fast"``), the Rust tokenizer's ``encode_batch_fast``, no prefetch;
- ``after``: the same with the prefetch thread that reads and prepares the next chunk while the
  encoder runs on this one (the default now).

Every configuration encodes with ``compile=True`` in bf16, batch 128, 2 torch threads (the
whole-corpus run's settings; the compiled encoder is warmed up on every batch shape first), and
writes the Parquet file. Reported: posts/s (median of rounds), the ratio to ``before``, and the
time outside the encoder per post, taken as wall time minus the encoder's time measured alone
on the same prepared chunks (``encoder_only``). ``TOKENIZERS_PARALLELISM=false``, as in
``bench_lm.py``'s whole-corpus run. Writes ``benchmarks/results/embed_pipeline.json``.
Usage: ``python benchmarks/embed_pipeline.py --model runs/.../lm/MODEL [--posts 49152] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from machine import cpu_info  # noqa: E402  (benchmarks/machine.py)
from ntulm.artifacts import write_text  # noqa: E402
from ntulm.lm import NTULM  # noqa: E402
from ntulm.lm.encode import embed_to_parquet, encode_prepared, prepare  # noqa: E402
from ntulm.posts.readers import PostReader  # noqa: E402

IRA_FILE = Path(__file__).resolve().parents[2] / "shared/data/ira/IRAhandle_tweets_en_01.csv.gz"
CONFIGS = ("before", "fast_serial", "after")
BATCH = 128


def head_file(src: Path, n: int, tmp: Path) -> Path:
    """The header and first ``n`` records of ``src`` as a gzipped CSV of their own (minimal
    quoting, as the IRA files have), so that every configuration reads exactly the posts it
    encodes: the fast reader parses a whole file before its first post."""
    out = tmp / src.name
    with (
        gzip.open(src, "rt", newline="", encoding="utf-8") as fh,
        gzip.open(out, "wt", newline="", encoding="utf-8", compresslevel=1) as dst,
    ):
        w = csv.writer(dst, lineterminator="\n")
        for row in itertools.islice(csv.reader(fh), n + 1):
            w.writerow(row)
    return out


def run(model: NTULM, name: str, path: Path, n: int, out: Path) -> float:
    """Seconds for ``embed_to_parquet`` of the first ``n`` posts of ``path`` under ``name``."""
    engine = "python" if name == "before" else "fast"
    reader = PostReader(engine=engine)
    slow_tok = mock.patch("ntulm.lm.data.rust_tokenizer", lambda *a: None)
    start = time.perf_counter()
    with slow_tok if name == "before" else contextlib.nullcontext():
        got = embed_to_parquet(
            model,
            reader.iter_posts([path]),
            out,
            batch_size=BATCH,
            limit=n,
            dtype="bfloat16",
            compile=True,
            prefetch=name == "after",
        )
    wall = time.perf_counter() - start
    assert got == n, (got, n)
    return wall


def prepared_chunks(model: NTULM, path: Path, n: int) -> list:
    """The first ``n`` posts of ``path`` prepared for the encoder, in embed's chunks."""
    from ntulm.lm.encode import _resolve_concat

    posts = [p for p, _ in itertools.islice(PostReader().iter_posts([path]), n)]
    concat, types = _resolve_concat(model, "mean", None, None)
    return [
        prepare(model, posts[i : i + 16384], None, concat, types, False) for i in range(0, n, 16384)
    ]


def encoder_only(model: NTULM, path: Path, n: int, batch_size: int = BATCH) -> float:
    """Seconds the compiled encoder alone takes over the same chunks (prepared beforehand)."""
    chunks = prepared_chunks(model, path, n)
    start = time.perf_counter()
    for inputs in chunks:
        encode_prepared(model, inputs, batch_size=batch_size, dtype="bfloat16", compile=True)
    return time.perf_counter() - start


def batch_sweep(
    model: NTULM, path: Path, n: int, sizes: list[int], rounds: int, compile: bool = True
) -> dict:
    """The compiled bf16 encoder alone at each batch size, interleaved in rounds after a warm-up
    pass at each size (every batch shape compiled): posts/s (median) and the ratio to 64, the
    default ``ntulm embed`` and ``encode`` had before."""
    chunks = prepared_chunks(model, path, n)

    def once(bs: int) -> float:
        start = time.perf_counter()
        for inputs in chunks:
            encode_prepared(model, inputs, batch_size=bs, dtype="bfloat16", compile=compile)
        return time.perf_counter() - start

    for bs in sizes:
        once(bs)
    times: dict[int, list[float]] = {bs: [] for bs in sizes}
    for _ in range(rounds):
        for bs in sizes:
            times[bs].append(once(bs))
    rate = {bs: n / statistics.median(t) for bs, t in times.items()}
    return {
        "times_s": {str(bs): t for bs, t in times.items()},
        "posts_per_s": {str(bs): round(r, 1) for bs, r in rate.items()},
        "ratio_to_64": {str(bs): round(r / rate[64], 3) for bs, r in rate.items() if 64 in rate},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a fine-tuned model directory (ntulm finetune)")
    ap.add_argument("--posts", type=int, default=49152)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--file", default=str(IRA_FILE))
    ap.add_argument("--out", default=None, help="default: benchmarks/results/embed_pipeline.json")
    ap.add_argument(
        "--batch-sweep",
        default=None,
        metavar="SIZES",
        help="instead: the encoder alone at these batch sizes, e.g. 64,128,256 "
        "(default --out benchmarks/results/embed_batch_sizes.json)",
    )
    ap.add_argument("--no-compile", action="store_true", help="with --batch-sweep: SDPA, eager")
    args = ap.parse_args()
    if args.batch_sweep:
        return sweep_main(args)
    args.out = args.out or "benchmarks/results/embed_pipeline.json"
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    uptime = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    model = NTULM.load(args.model).eval()
    times: dict[str, list[float]] = {c: [] for c in (*CONFIGS, "encoder_only")}
    with tempfile.TemporaryDirectory() as tmp:
        path = head_file(Path(args.file), args.posts, Path(tmp))
        warm = time.perf_counter()
        times_warm = encoder_only(model, path, args.posts)  # compiles every batch shape
        warm = time.perf_counter() - warm
        print(f"warm-up {warm:.0f} s (encoder {times_warm:.0f} s)", file=sys.stderr)
        for r in range(args.rounds):
            for c in CONFIGS:
                times[c].append(run(model, c, path, args.posts, Path(tmp) / f"{c}.parquet"))
                print(f"round {r} {c}: {times[c][-1]:.1f} s", file=sys.stderr)
            times["encoder_only"].append(encoder_only(model, path, args.posts))
    uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    med = {c: statistics.median(t) for c, t in times.items()}
    enc = med["encoder_only"]
    result = {
        "command": "python benchmarks/embed_pipeline.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "file": f"{Path(args.file).name}, its first {args.posts} records",
        "posts": args.posts,
        "batch_size": BATCH,
        "threads": 2,
        "dtype": "bfloat16 autocast, compile=True",
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "times_s": times,
        "posts_per_s": {c: round(args.posts / t, 1) for c, t in med.items()},
        "ratio_to_before": {c: round(med["before"] / med[c], 3) for c in CONFIGS},
        "outside_encoder_us_per_post": {
            c: round((med[c] - enc) / args.posts * 1e6, 1) for c in CONFIGS
        },
        "whole_corpus_min_at_rate": {
            c: round(1_676_954 / (args.posts / t) / 60, 1) for c, t in med.items()
        },
        "machine": cpu_info(),
        "uptime": uptime,
    }
    line = json.dumps(result)
    print(line)
    write_text(args.out, json.dumps(result, indent=1) + "\n")


def sweep_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    uptime = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    model = NTULM.load(args.model).eval()
    sizes = [int(x) for x in args.batch_sweep.split(",")]
    compile = not args.no_compile
    with tempfile.TemporaryDirectory() as tmp:
        path = head_file(Path(args.file), args.posts, Path(tmp))
        result = {
            "command": "python benchmarks/embed_pipeline.py " + " ".join(sys.argv[1:]),
            "model": args.model,
            "file": f"{Path(args.file).name}, its first {args.posts} records",
            "posts": args.posts,
            "threads": 2,
            "dtype": f"bfloat16 autocast, compile={compile}, the encoder alone (prepared chunks)",
            **batch_sweep(model, path, args.posts, sizes, args.rounds, compile),
        }
    uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    result.update(machine=cpu_info(), uptime=uptime)
    print(json.dumps(result))
    write_text(
        args.out or "benchmarks/results/embed_batch_sizes.json", json.dumps(result, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
