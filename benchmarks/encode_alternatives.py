"""Benchmark: what else could make the encoder faster on this CPU, side by side with what
``ntulm embed --compile --dtype bfloat16`` does, on the same prepared IRA posts and model.

The whole IRA corpus takes 25.8 min (issue 12 asks for 20); the encoder alone runs about
1,300 posts/s, and its bf16 matmuls alone would need 18.9 min (``corpus_tokens.py``). This
script measures the alternatives a user would try next, each on the same chunks of the first
``--posts`` posts of an IRA file (prepared once: reading, tokenizing and NTU lookups are not
timed), batch 128, 2 torch threads, in rounds, interleaved after a warm-up pass each:

- ``autocast_compiled``: the default of the whole-corpus run (bf16 autocast, ``compile=True``);
- ``bf16_weights_compiled``: the same with the encoder's ``nn.Linear`` weights stored in bf16,
  so autocast has nothing to cast per batch (the cast is the same rounding: outputs must be
  bit-identical);
- ``autocast_sdpa``: bf16 autocast without compile (SDPA attention);
- ``int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` on the encoder's ``nn.Linear``
  (int8 weights, activations quantized per batch, float32 elsewhere), not compiled;
- ``two_processes``: two processes of one torch thread each, each encoding half of every chunk
  compiled in bf16 (what ``ntulm embed --nproc 2`` does with the encoder), timed from a common
  start after both have compiled.

Reported: posts/s (median of rounds), the ratio to ``autocast_compiled``, and the largest
absolute difference and the smallest cosine of each configuration's embeddings to the
default's. Writes ``benchmarks/results/encode_alternatives.json``.
Usage: ``python benchmarks/encode_alternatives.py --model runs/.../lm/MODEL [--posts 16384]``
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from embed_pipeline import IRA_FILE, head_file, prepared_chunks  # noqa: E402
from machine import cpu_info  # noqa: E402  (benchmarks/machine.py)
from ntulm.artifacts import write_text  # noqa: E402
from ntulm.lm import NTULM  # noqa: E402
from ntulm.lm.encode import Prepared, encode_prepared  # noqa: E402

BATCH = 128


@contextlib.contextmanager
def bf16_linear_weights(model: NTULM) -> Iterator[None]:
    """Within the block the encoder's ``nn.Linear`` weights are bf16 copies (restored after)."""
    saved = [(m, m.weight) for m in model.base.encoder.modules() if isinstance(m, torch.nn.Linear)]
    for m, w in saved:
        m.weight = torch.nn.Parameter(w.detach().to(torch.bfloat16), requires_grad=False)
    try:
        yield
    finally:
        for m, w in saved:
            m.weight = w


def half(inputs: Prepared, part: int, parts: int) -> Prepared:
    """Share ``part`` of ``parts`` of a prepared chunk (contiguous rows)."""
    n = len(inputs.tokens)
    a, b = part * n // parts, (part + 1) * n // parts
    cut = lambda x: None if x is None else x[a:b]  # noqa: E731
    return Prepared(
        inputs.tokens[a:b], cut(inputs.e_ntu), inputs.overlap[a:b], cut(inputs.appended)
    )


def configs(model: NTULM) -> dict[str, Callable[[list[Prepared]], np.ndarray]]:
    quantized = copy.deepcopy(model)
    quantized.base.encoder = torch.ao.quantization.quantize_dynamic(
        quantized.base.encoder, {torch.nn.Linear}, dtype=torch.qint8
    )

    def run(m: NTULM, dtype: str, compile: bool, ctx=contextlib.nullcontext):
        def go(chunks: list[Prepared]) -> np.ndarray:
            with ctx():
                return np.concatenate(
                    [
                        encode_prepared(m, c, batch_size=BATCH, dtype=dtype, compile=compile)
                        for c in chunks
                    ]
                )

        return go

    return {
        "autocast_compiled": run(model, "bfloat16", True),
        "bf16_weights_compiled": run(model, "bfloat16", True, lambda: bf16_linear_weights(model)),
        "autocast_sdpa": run(model, "bfloat16", False),
        "int8_dynamic": run(quantized, "float32", False),
    }


def worker(args: argparse.Namespace) -> None:
    """One of the two one-thread processes: compile, wait for the other, encode, report."""
    torch.set_num_threads(1)
    part, parts = (int(x) for x in args.worker.split("/"))
    model = NTULM.load(args.model)
    chunks = [half(c, part, parts) for c in prepared_chunks(model, Path(args.file), args.posts)]
    for c in chunks:  # warm-up: every batch shape compiled
        encode_prepared(model, c, batch_size=BATCH, dtype="bfloat16", compile=True)
    barrier = Path(args.barrier)
    (barrier / f"ready{part}").touch()
    while len(list(barrier.glob("ready*"))) < parts:
        time.sleep(0.01)
    times = []
    for _ in range(args.rounds):
        start = time.time()
        for c in chunks:
            encode_prepared(model, c, batch_size=BATCH, dtype="bfloat16", compile=True)
        times.append([start, time.time()])
    print(json.dumps({"posts": sum(len(c.tokens) for c in chunks), "times": times}))


def two_processes(args: argparse.Namespace, path: Path) -> dict:
    with tempfile.TemporaryDirectory() as barrier:
        cmd = [sys.executable, __file__, "--model", args.model, "--file", str(path)]
        cmd += ["--posts", str(args.posts), "--rounds", str(args.rounds), "--barrier", barrier]
        procs = [
            subprocess.Popen([*cmd, "--worker", f"{i}/2"], stdout=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    posts = sum(o["posts"] for o in outs)
    # round r: from the earlier start to the later end of the two processes
    walls = [
        max(o["times"][r][1] for o in outs) - min(o["times"][r][0] for o in outs)
        for r in range(args.rounds)
    ]
    return {"times_s": walls, "posts_per_s": posts / statistics.median(walls)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a fine-tuned model directory (ntulm finetune)")
    ap.add_argument("--posts", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--file", default=str(IRA_FILE))
    ap.add_argument(
        "--out", default=None, help="default: benchmarks/results/encode_alternatives.json"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(2)
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        path = head_file(Path(args.file), args.posts, Path(tmp))
        model = NTULM.load(args.model)
        chunks = prepared_chunks(model, path, args.posts)
        runs = configs(model)
        out = {name: go(chunks) for name, go in runs.items()}  # warm-up, and the outputs
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, go in runs.items():
                start = time.perf_counter()
                go(chunks)
                times[name].append(time.perf_counter() - start)
        del model, runs
        pair = two_processes(args, path)
    ref = out["autocast_compiled"]
    rate = {name: args.posts / statistics.median(t) for name, t in times.items()}
    rate["two_processes"] = pair["posts_per_s"]
    times["two_processes"] = pair["times_s"]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    result = {
        "command": "python benchmarks/encode_alternatives.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "posts": args.posts,
        "batch_size": BATCH,
        "torch_threads": "2 (two_processes: 1 each)",
        "times_s": times,
        "posts_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_to_autocast_compiled": {
            k: round(v / rate["autocast_compiled"], 3) for k, v in rate.items()
        },
        "max_abs_diff_to_default": {
            k: float(np.abs(v - ref).max()) for k, v in out.items() if k != "autocast_compiled"
        },
        "min_cosine_to_default": {
            k: cosine(v, ref) for k, v in out.items() if k != "autocast_compiled"
        },
        "machine": cpu_info(),
        "uptime_before": uptime_before,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    dest = Path(args.out or Path(__file__).parent / "results" / "encode_alternatives.json")
    write_text(dest, json.dumps(result, indent=1) + "\n")
    print(
        json.dumps(
            {"posts_per_s": result["posts_per_s"], "ratio": result["ratio_to_autocast_compiled"]}
        )
    )


if __name__ == "__main__":
    main()
