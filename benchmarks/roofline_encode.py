"""Benchmark: how close ``encode`` runs to this CPU's matmul roofline, and what that roofline
allows for the whole IRA corpus (issue 12's "whole corpus <= 20 min").

Side by side, in rounds (interleaved, so that load from other jobs hits both alike):
- ``encode``: :func:`ntulm.lm.encode.encode` of an IRA sample with an NTULM (MiniLM-L6 + the NTU
  token), bf16 autocast and float32, batch 128, the sorted length-grouped batches it always uses;
- ``encode_2proc``: the same posts split between two processes of one thread each (what ``ntulm
  embed --nproc 2`` does), bf16, against one process of two threads;
- ``gemm``: the same model's matmuls alone, as bare ``torch`` products of the shapes one encoder
  layer multiplies (Q, K, V, output, FFN in/out: (M, H) x (H, H) four times, (M, H) x (H, 4H),
  (M, 4H) x (4H, H), M = the batch's tokens) and the attention products, in the same dtype, on
  the same threads.

The FLOPs of each batch are counted from its padded shape (``2 * MACs``; layer norms, GELU,
softmax, embeddings and pooling are left out, so the fraction is an upper bound of the matmul
share). ``roofline_posts_per_s`` is what the encoder would reach if it did nothing but these
matmuls at the measured rate, and ``roofline_whole_corpus_min`` that rate over the 1,676,954 IRA
posts. Prints one JSON line and writes ``benchmarks/results/roofline_encode.json``.
Usage: ``python benchmarks/roofline_encode.py [--posts 3000] [--rounds 3] [--threads 2]
--ntu /path/to/kge``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import cpu_info  # noqa: E402  (benchmarks/machine.py)
from ntulm.artifacts import write_text  # noqa: E402
from ntulm.kge import NTUEmbeddings  # noqa: E402
from ntulm.lm import NTULM, LMConfig  # noqa: E402
from ntulm.lm.data import length_grouped_batches, tokenize  # noqa: E402
from ntulm.lm.encode import encode  # noqa: E402
from ntulm.posts import PostReader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IRA_POSTS = 1_676_954
BATCH = 128


def batch_shapes(model: NTULM, posts: list) -> list[tuple[int, int]]:
    """(posts, padded tokens incl. the NTU token) of each batch ``encode`` runs."""
    cfg = model.cfg
    tokens = tokenize([p.text for p in posts], model.tokenizer, cfg.max_length, cfg.text)
    lengths = np.array([len(t) for t in tokens])
    extra = 1 if model.use_ntu else 0
    return [(len(i), int(lengths[i].max()) + extra) for i in length_grouped_batches(lengths, BATCH)]


def flops(shapes: list[tuple[int, int]], h: int, ffn: int, layers: int) -> float:
    """Matmul FLOPs of the encoder over these batches: per token 4 H x H products and the two
    FFN products; per sequence QK^T and AV (T x T x H each)."""
    total = 0.0
    for b, t in shapes:
        linear = b * t * (4 * h * h + 2 * h * ffn)
        attention = 2 * b * t * t * h
        total += 2.0 * layers * (linear + attention)
    return total


def gemm_pass(
    shapes: list[tuple[int, int]], h: int, ffn: int, heads: int, layers: int, dtype: torch.dtype
) -> float:
    """Seconds for the encoder's matmuls alone over these batches (bare products, one layer's
    set repeated ``layers`` times on the same buffers)."""
    w_h = [torch.randn(h, h, dtype=dtype) for _ in range(4)]
    w_in, w_out = torch.randn(h, ffn, dtype=dtype), torch.randn(ffn, h, dtype=dtype)
    start = time.perf_counter()
    for b, t in shapes:
        x = torch.randn(b * t, h, dtype=dtype)  # (M, H)
        mid = torch.empty(b * t, ffn, dtype=dtype)
        out = torch.empty(b * t, h, dtype=dtype)
        q = torch.randn(b * heads, t, h // heads, dtype=dtype)
        s = torch.empty(b * heads, t, t, dtype=dtype)
        ctx = torch.empty(b * heads, t, h // heads, dtype=dtype)
        for _ in range(layers):
            for w in w_h:
                torch.mm(x, w, out=out)
            torch.bmm(q, q.transpose(1, 2), out=s)  # QK^T
            torch.bmm(s, q, out=ctx)  # AV
            torch.mm(x, w_in, out=mid)
            torch.mm(mid, w_out, out=out)
    return time.perf_counter() - start


def load_posts(data: str, n: int) -> list:
    """The first ``n`` posts of the corpus's second half of files (the same ones every call)."""
    files = sorted(str(p) for p in Path(data).glob("*.csv*"))
    posts = []
    for post, _ in PostReader().iter_posts(files[len(files) // 2 :]):
        posts.append(post)
        if len(posts) == n:
            break
    return posts


def load_model(ntu_dir: str) -> NTULM:
    """A fresh NTULM (MiniLM-L6 + the NTU token) over the given NTU table: the speed of the
    encoder does not depend on its weights."""
    torch.manual_seed(0)
    ntu = NTUEmbeddings.load(ntu_dir)
    model, _ = NTULM.from_backbone(LMConfig.build({"progress": False}), ntu.dim)
    model.ntu = ntu
    return model.eval()


def shard_worker(data: str, n: int, ntu_dir: str, index: int, count: int, start_at: float) -> float:
    """One process of ``encode_2proc``: one thread, posts ``index::count``; loads everything,
    waits for the common start, returns when it finished (``time.time()``)."""
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    posts = load_posts(data, n)[index::count]
    model = load_model(ntu_dir)
    encode(model, posts[:64], batch_size=BATCH, dtype="bfloat16", concat_ntu=False)  # warm-up
    time.sleep(max(0.0, start_at - time.time()))
    encode(model, posts, batch_size=BATCH, dtype="bfloat16", concat_ntu=False)
    return time.time()


def two_processes(data: str, n: int, ntu_dir: str, pool: ProcessPoolExecutor) -> float:
    """Wall seconds of ``encode_2proc``, from the common start to the last process's end."""
    start_at = time.time() + 30  # both have loaded the model and the posts by then
    futures = [pool.submit(shard_worker, data, n, ntu_dir, i, 2, start_at) for i in range(2)]
    return max(f.result() for f in futures) - start_at


def parse_args(doc: str, rounds: int, out: str) -> argparse.Namespace:
    """The options of an encoding benchmark over an IRA sample (this one and
    ``encode_variants.py``); sets the torch threads and quiets transformers."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/ira"))
    ap.add_argument("--posts", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ntu", required=True, help="a KGE artifact (ntulm train-kge --out)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results" / out))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return args


def main() -> None:
    args = parse_args(__doc__, 3, "roofline_encode.json")
    posts = load_posts(args.data, args.posts)
    model = load_model(args.ntu)
    bc = model.base.config
    h, ffn, heads, layers = (
        bc.hidden_size,
        bc.intermediate_size,
        bc.num_attention_heads,
        (bc.num_hidden_layers),
    )
    shapes = batch_shapes(model, posts)
    work = flops(shapes, h, ffn, layers)
    uptime = [subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()]
    names = ("encode_bf16", "encode_2proc_bf16", "gemm_bf16", "encode_fp32", "gemm_fp32")
    times: dict[str, list[float]] = {k: [] for k in names}
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    encode(model, posts[:256], batch_size=BATCH, dtype="bfloat16", concat_ntu=False)  # warm-up
    gemm_pass(shapes[:4], h, ffn, heads, layers, torch.bfloat16)
    for _ in range(args.rounds):
        for dt, tdt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            t = time.perf_counter()
            encode(model, posts, batch_size=BATCH, dtype="bfloat16" if dt == "bf16" else "float32",
                   concat_ntu=False)  # fmt: skip
            times[f"encode_{dt}"].append(time.perf_counter() - t)
            times[f"gemm_{dt}"].append(gemm_pass(shapes, h, ffn, heads, layers, tdt))
        times["encode_2proc_bf16"].append(two_processes(args.data, args.posts, args.ntu, pool))
    pool.shutdown()
    uptime.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    med = {k: float(np.median(v)) for k, v in times.items()}
    n = len(posts)
    res: dict = {
        "command": "python " + " ".join(sys.argv),
        "posts": n,
        "batch_size": BATCH,
        "threads": args.threads,
        "padded_tokens_per_post": round(sum(b * t for b, t in shapes) / n, 2),
        "gflop_per_post": round(work / n / 1e9, 4),
        "times_s": times,
        "machine": cpu_info(),
        "uptime": uptime,
    }
    res["encode_2proc_bf16_posts_per_s"] = round(n / med["encode_2proc_bf16"], 1)
    res["encode_2proc_vs_1proc_bf16"] = round(med["encode_bf16"] / med["encode_2proc_bf16"], 3)
    for dt in ("bf16", "fp32"):
        enc, gemm = med[f"encode_{dt}"], med[f"gemm_{dt}"]
        res[dt] = {
            "encode_posts_per_s": round(n / enc, 1),
            "encode_gflops": round(work / enc / 1e9, 1),
            "gemm_gflops": round(work / gemm / 1e9, 1),
            "roofline_fraction": round(gemm / enc, 3),
            "roofline_posts_per_s": round(n / gemm, 1),
            "whole_corpus_min_at_encode": round(IRA_POSTS / (n / enc) / 60, 1),
            "roofline_whole_corpus_min": round(IRA_POSTS / (n / gemm) / 60, 1),
        }
    line = json.dumps(res)
    print(line)
    write_text(Path(args.out), json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
