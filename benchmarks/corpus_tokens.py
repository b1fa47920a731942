"""How many token slots the encoder sees per post over a whole corpus: word pieces (with [CLS] and
[SEP], truncated as the model truncates) and NTU slots (and, for a per-type model, how many of its
types a post has: the others get the learned unknown vector or are masked, per ``ntu_absent``). With the matmul FLOPs per slot of ``roofline_encode.json`` and its
bf16 matmul rate this gives the floor under ``ntulm embed`` on the corpus (issue 12's 20-minute
goal): the time of the encoder's matmuls alone, before attention, layer norms and reading.

Usage: ``python benchmarks/corpus_tokens.py --model runs/.../lm/MODEL [--posts ../shared/data/ira]``
Writes ``benchmarks/results/corpus_tokens.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from ntulm.artifacts import write_text  # noqa: E402
from ntulm.lm import NTULM  # noqa: E402
from ntulm.lm.data import ntu_inputs, tokenize  # noqa: E402
from ntulm.posts.readers import PostReader  # noqa: E402

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parents[1] / "shared/data/ira"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--posts", default=str(DATA))
    ap.add_argument("--out", default=str(ROOT / "results/corpus_tokens.json"))
    args = ap.parse_args()
    model = NTULM.load(args.model)
    assert model.cfg is not None and model.ntu is not None
    n = pieces = attended = 0
    chunk: list = []

    def count(chunk: list) -> tuple[int, int]:
        tokens = tokenize([p.text for p in chunk], model.tokenizer, model.cfg.max_length,
                          model.cfg.text)  # fmt: skip
        e, _ = ntu_inputs(chunk, model.ntu, model.cfg)
        present = (~np.isnan(e).all(axis=2)).sum() if e.ndim == 3 else len(chunk)
        return sum(len(t) for t in tokens), int(present)

    for post, _ in PostReader().iter_posts([args.posts]):
        chunk.append(post)
        if len(chunk) == 65536:
            a, b = count(chunk)
            n, pieces, attended, chunk = n + len(chunk), pieces + a, attended + b, []
    if chunk:
        a, b = count(chunk)
        n, pieces, attended = n + len(chunk), pieces + a, attended + b
    slots = len(model.cfg.ntu_types) if model.cfg.ntu_tokens == "per_type" else 1
    roof = json.loads((ROOT / "results/roofline_encode.json").read_text())
    mflop_per_slot = roof["gflop_per_post"] * 1e3 / roof["padded_tokens_per_post"]
    per_post = pieces / n + slots
    gflop = per_post * mflop_per_slot / 1e3
    rate = roof["bf16"]["gemm_gflops"]
    result = {
        "command": "python benchmarks/corpus_tokens.py --model " + args.model,
        "posts": n,
        "word_pieces_per_post": round(pieces / n, 3),
        "ntu_slots_per_post": slots,
        # a per-type model's slot of a type the post lacks: with ntu_absent "unknown" it holds
        # the learned unknown vector and is attended like the others; with "drop" it is masked
        "present_ntu_types_per_post": round(attended / n, 3),
        "ntu_absent": model.cfg.ntu_absent if model.cfg.ntu_tokens == "per_type" else None,
        "slots_per_post": round(per_post, 3),
        "mflop_per_slot_from_roofline": round(mflop_per_slot, 2),
        "gflop_per_post": round(gflop, 4),
        "bf16_matmul_gflops_from_roofline": rate,
        "matmul_floor_min": round(n * gflop / rate / 60, 1),
    }
    print(json.dumps(result))
    write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
