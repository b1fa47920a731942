"""Benchmark: can ``encode`` reach the whole IRA corpus in 20 minutes (issue 12)? The encoder
variants that might close the gap, side by side against what ``encode`` does now.

``benchmarks/roofline_encode.py`` showed that the bf16 encoder runs at about 60% of this CPU's
matmul roofline; its profile put the rest in SDPA's CPU flash-attention kernel (about 21% for
tweets of some 22 tokens), autocast's casts and copies, GELU and layer norm. Each variant here
attacks part of that, on the same posts, model and threads, interleaved in rounds (so that load
from other jobs hits all alike), after a warm-up pass over every post (so that a compiled
variant has seen every batch shape before it is timed):

- ``sdpa`` (now): bf16 autocast, the model's SDPA attention;
- ``eager``: bf16 autocast, transformers' eager attention (bmm + softmax);
- ``compiled``: ``eager`` with the encoder under ``torch.compile(dynamic=True)`` (inductor; it
  needs a C++ compiler, and compiles per process);
- ``bf16_weights``: the whole model cast to bf16, no autocast (layer norm and softmax in bf16);
- ``int8_dynamic``: ``torch.ao`` dynamic int8 quantization of the encoder's linear layers, float32
  elsewhere (this CPU has AVX-512 VNNI);
- ``*_2proc``: the posts split between two one-thread processes (what ``ntulm embed --nproc 2``
  does), for ``sdpa``, ``eager`` and ``compiled``.

Each variant's posts/s (median of the rounds), its ratio to ``sdpa`` (1 process, 2 threads), the
lowest cosine of its embeddings to ``sdpa``'s, and the whole corpus (1,676,954 posts) at that
rate, in minutes, encoding alone (no reading, tokenizing or writing). The goal needs 1,397
posts/s. Prints one JSON line and writes ``benchmarks/results/encode_variants.json``.
Usage: ``python benchmarks/encode_variants.py --ntu /path/to/kge [--posts 3000] [--rounds 4]``
"""

from __future__ import annotations

import copy
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
from ntulm.lm import NTULM  # noqa: E402
from ntulm.lm.encode import encode  # noqa: E402
from roofline_encode import IRA_POSTS, load_model, load_posts, parse_args  # noqa: E402

BATCH = 128
ONE_PROC = ("sdpa", "eager", "compiled", "bf16_weights", "int8_dynamic")
TWO_PROC = ("sdpa", "eager", "compiled")


def variant(base: NTULM, name: str) -> tuple[NTULM, str]:
    """The model to encode with for variant ``name`` and the ``encode`` dtype it runs under."""
    if name == "sdpa":
        base.base.set_attn_implementation("sdpa")
        return base, "bfloat16"
    model = copy.deepcopy(base)
    model.ntu = base.ntu
    if name == "int8_dynamic":
        model.base.encoder = torch.ao.quantization.quantize_dynamic(
            model.base.encoder, {torch.nn.Linear}, dtype=torch.qint8
        )
        return model, "float32"
    if name == "bf16_weights":
        model.to(torch.bfloat16)
        model.base.set_attn_implementation("sdpa")
        return model, "float32"  # no autocast: the weights and activations are bf16 already
    model.base.set_attn_implementation("eager")
    if name == "compiled":
        model.base.encoder.forward = torch.compile(model.base.encoder.forward, dynamic=True)
    return model, "bfloat16"


def run(model: NTULM, dtype: str, posts: list) -> np.ndarray:
    return encode(model, posts, batch_size=BATCH, dtype=dtype, concat_ntu=False)


def shard_worker(
    data: str, n: int, ntu_dir: str, name: str, index: int, start_at: float, rounds: int
) -> tuple[list[float], np.ndarray]:
    """One of the two processes of ``<name>_2proc``: one thread, posts ``index::2``; warms up on
    its posts, waits for the common start, then times ``rounds`` passes (seconds each)."""
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    posts = load_posts(data, n)[index::2]
    model, dtype = variant(load_model(ntu_dir), name)
    emb = run(model, dtype, posts)  # warm-up: every batch shape (compiles, for "compiled")
    time.sleep(max(0.0, start_at - time.time()))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        run(model, dtype, posts)
        times.append(time.perf_counter() - t)
    return times, emb


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min())


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    args = parse_args(__doc__, 4, "encode_variants.json")
    posts = load_posts(args.data, args.posts)
    base = load_model(args.ntu)
    ups = [uptime()]
    models = {name: variant(base, name) for name in ONE_PROC}
    emb = {name: run(m, dt, posts) for name, (m, dt) in models.items()}  # warm-up, every shape
    times: dict[str, list[float]] = {name: [] for name in ONE_PROC}
    for _ in range(args.rounds):
        for name, (m, dt) in models.items():
            t = time.perf_counter()
            run(m, dt, posts)
            times[name].append(time.perf_counter() - t)
    ups.append(uptime())
    for name in TWO_PROC:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            start_at = time.time() + 90  # both have loaded, warmed up (and compiled) by then
            futures = [
                pool.submit(
                    shard_worker, args.data, args.posts, args.ntu, name, i, start_at, args.rounds
                )
                for i in range(2)
            ]
            parts = [f.result() for f in futures]
        times[f"{name}_2proc"] = [max(a, b) for a, b in zip(parts[0][0], parts[1][0], strict=True)]
        both = np.zeros_like(emb["sdpa"])
        both[0::2], both[1::2] = parts[0][1], parts[1][1]
        emb[f"{name}_2proc"] = both
    ups.append(uptime())
    n = len(posts)
    ref = float(np.median(times["sdpa"]))
    res: dict = {
        "command": "python " + " ".join(sys.argv),
        "posts": n,
        "batch_size": BATCH,
        "threads": args.threads,
        "rounds": args.rounds,
        "times_s": times,
        "machine": cpu_info(),
        "torch": torch.__version__,
        "uptime": ups,
        "goal_posts_per_s": round(IRA_POSTS / 1200, 1),
        "variants": {},
    }
    for name, ts in times.items():
        med = float(np.median(ts))
        res["variants"][name] = {
            "posts_per_s": round(n / med, 1),
            "vs_sdpa": round(ref / med, 3),
            "min_cosine_to_sdpa": round(min_cosine(emb[name], emb["sdpa"]), 5),
            "whole_corpus_min": round(IRA_POSTS / (n / med) / 60, 1),
        }
    best = max(res["variants"], key=lambda k: res["variants"][k]["posts_per_s"])
    res["best"] = best
    res["goal_met_by_best"] = res["variants"][best]["posts_per_s"] >= res["goal_posts_per_s"]
    print(json.dumps({k: res[k] for k in ("variants", "best", "goal_met_by_best")}))
    write_text(args.out, json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
