"""Benchmark of the LM stage, side by side in one run, on the same backbone (all-MiniLM-L6-v2),
IRA posts, batch size and torch threads:

- MLM training: ``ntulm`` in bfloat16 autocast with length-grouped batches (the new default on
  CPUs with native bf16) vs ``ntulm`` in float32 with the same grouped batches (the dtype alone)
  vs ``ntulm`` in float32 with padded batches in sampling order (the issue's baseline: the
  headline ``train_speedup_vs_fp32``) vs the Hugging Face
  ``Trainer`` at its best CPU setting (``bf16=True``, ``train_sampling_strategy="group_by_length"``, the
  transformers 5 name of ``group_by_length=True``). Each trains the
  same fresh model (no NTU token, so all three are the same network) for the same steps; tokens/s
  AND held-out bits after training, scored in float32 on the same fixed masked positions;
- encoding posts/s: ``embed_to_parquet`` as it was (chunks of 4,096, per-post padding loop; the
  code of ``--old-rev``) vs now (chunks of 16,384, vectorised padding), both bf16 autocast, on
  the same sample of IRA posts with the real NTU lookup; ``encode`` on a bf16 *copy* of the
  weights (an alternative, not used) and ``NTULM.encode`` vs ``SentenceTransformer.encode``
  (bf16); the whole-corpus time is estimated from these rates and the reading rate.

Prints one JSON line and writes ``benchmarks/results/bench_lm.json``.

    flock /tmp/ntulm-heavy.lock python benchmarks/bench_lm.py \
        [--posts ../shared/data/ira] [--ntu /work/cache/ira/kge]
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import cpu_info  # noqa: E402  (benchmarks/machine.py)
from ntulm.lm import NTULM, LMConfig, evaluate_bits, finetune  # noqa: E402
from ntulm.lm.config import resolve_backbone  # noqa: E402
from ntulm.lm.data import fixed_eval_masks, tokenize  # noqa: E402
from ntulm.lm.encode import embed_to_parquet, encode  # noqa: E402
from ntulm.lm.text import normalize_text  # noqa: E402
from ntulm.lm.train import split_posts  # noqa: E402
from ntulm.posts import PostReader  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_lm.json"
IRA_POSTS = 1_676_954  # posts PostReader reads from the IRA CSVs (counted by `ntulm embed`)


def sample_posts(paths: list[str], n: int, rate: float, seed: int = 0) -> tuple[list, int, float]:
    """A seeded ``rate`` sample of the first posts read; also the posts read and the seconds."""
    rng = np.random.default_rng(seed)
    out, read, t0 = [], 0, time.perf_counter()
    for post, _ in PostReader().iter_posts(paths):
        read += 1
        if rng.random() < rate:
            out.append(post)
            if len(out) == n:
                break
    return out, read, time.perf_counter() - t0


def ours(posts: list, cfg: LMConfig, out: Path) -> dict:
    r = finetune(posts, cfg, out)
    return {
        "dtype": r.train_dtype,
        "group_by_length": cfg.group_by_length,
        "tokens_per_s": round(r.tokens_per_s, 1),
        "tokens_seen": r.train_tokens,
        "steps": r.steps,
        "held_out_bits_before": round(r.initial_eval_bits, 4),
        "held_out_bits": round(r.eval_bits[-1], 4),
    }


def hf_trainer(posts: list, cfg: LMConfig, out: str) -> dict:
    """HF ``Trainer`` (bf16 autocast, ``group_by_length``) on our training split; timed from the
    end of the first step (set-up and first-step overheads excluded, in the baseline's favour);
    scored with our ``evaluate_bits`` on our held-out masks."""
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    path = resolve_backbone(cfg.backbone)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(cfg.seed)
    model = AutoModelForMaskedLM.from_pretrained(path)
    tokens = tokenize([p.text for p in posts], tok, cfg.max_length, cfg.text)
    tr, ev = split_posts(len(posts), cfg)
    data = [{"input_ids": tokens[i].tolist()} for i in tr]
    masks = fixed_eval_masks([tokens[i] for i in ev], tok, cfg.mlm_probability, cfg.seed)
    base = DataCollatorForLanguageModeling(tok, mlm_probability=cfg.mlm_probability)
    seen: list[int] = []

    def collate(features):
        batch = base(features)
        seen.append(int(batch["attention_mask"].sum()))
        return batch

    class Clock(TrainerCallback):
        t0 = t1 = 0.0

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            if state.global_step == 1:
                Clock.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            Clock.t1 = time.perf_counter()

    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.max_steps,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=int(cfg.warmup_ratio * cfg.max_steps),
        max_grad_norm=1.0,
        bf16=True,
        train_sampling_strategy="group_by_length",
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=cfg.seed,
    )
    Trainer(
        model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()]
    ).train()
    net = NTULM(model, None)
    net.tokenizer = tok
    return {
        "dtype": "bfloat16",
        "group_by_length": True,
        "tokens_per_s": round(sum(seen[1 : cfg.max_steps]) / (Clock.t1 - Clock.t0), 1),
        "tokens_seen": sum(seen[: cfg.max_steps]),
        "steps": cfg.max_steps,
        "held_out_bits": round(evaluate_bits(net, masks, None, 64), 4),
    }


def old_encode_module(rev: str):
    """``ntulm/lm/encode.py`` as it was at git revision ``rev`` (the code being replaced)."""
    root = Path(__file__).resolve().parent.parent
    src = subprocess.run(
        ["git", "show", f"{rev}:src/ntulm/lm/encode.py"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_encode.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_encode", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def posts_per_s(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return round(n / (time.perf_counter() - t0), 1)


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return round(float(cos.min()), 5)


def whole_corpus(args: argparse.Namespace) -> dict:
    """``ntulm embed`` over the whole corpus, timed, with the process tree's peak RSS."""
    sys.path.insert(0, str(Path(__file__).parent))
    from procmem import run_measured

    with tempfile.TemporaryDirectory() as tmp:
        nproc = ["--nproc", str(args.whole_corpus_nproc)] if args.whole_corpus_nproc > 1 else []
        comp = ["--compile"] if args.whole_corpus_compile else []
        cmd = ["ntulm", "-q", "embed", "--model", args.whole_corpus_model, "--posts", args.posts,
               *nproc, *comp, "--out", f"{tmp}/emb.parquet", "--dtype", "bfloat16",
               "--batch-size", str(args.embed_batch_size)]  # fmt: skip
        before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        done, wall, peak = run_measured(cmd)
        if done.returncode != 0:
            raise SystemExit(f"ntulm embed failed ({done.returncode}): {done.stderr[-2000:]}")
        import pyarrow.parquet as pq

        out = Path(f"{tmp}/emb.parquet")  # with --nproc: a directory of part files
        parts = sorted(out.glob("part-*.parquet")) if out.is_dir() else [out]
        posts = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    return {
        "command": " ".join(cmd[:-5] + ["FILE", *cmd[-4:]]),
        "posts": posts,
        "wall_s": round(wall, 1),
        "posts_per_s": round(posts / wall, 1),
        "peak_rss_mb_tree": round(peak, 1),
        "dtype": "bfloat16 autocast",
        "torch_threads": "ntulm embed default (all cores, split between --nproc processes)",
        "nproc": args.whole_corpus_nproc,
        "compile": args.whole_corpus_compile,
        "machine": cpu_info(),
        "uptime_before": before,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }


def save(res: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", default="../shared/data/ira")
    ap.add_argument("--ntu", default="/work/cache/ira/kge")
    ap.add_argument("--n-posts", type=int, default=20_000, help="IRA sample (encoding)")
    ap.add_argument("--train-posts", type=int, default=3000, help="first N of it (training)")
    ap.add_argument("--steps", type=int, default=80, help="optimizer steps (within one epoch)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--embed-batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old-rev", default="acb0f52", help="git revision of the old encode.py")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--whole-corpus-model",
        help="also run `ntulm embed` with this fine-tuned model over every post of --posts "
        "(bf16, --embed-batch-size) and record embed_whole_corpus: wall_s, posts/s, peak RSS "
        "of the process tree (about 30-40 min on 2 cores)",
    )
    ap.add_argument(
        "--whole-corpus-nproc",
        type=int,
        default=1,
        help="run that `ntulm embed` as this many processes (--nproc), the cores split among them",
    )
    ap.add_argument(
        "--whole-corpus-compile",
        action="store_true",
        help="run that `ntulm embed` with --compile (the encoder under torch.compile)",
    )
    ap.add_argument(
        "--only-whole-corpus",
        action="store_true",
        help="measure only embed_whole_corpus and merge it into the existing --out JSON",
    )
    args = ap.parse_args()
    if args.only_whole_corpus:
        if not args.whole_corpus_model:
            ap.error("--only-whole-corpus needs --whole-corpus-model")
        res = json.loads(Path(args.out).read_text())
        if "embed_whole_corpus" in res:  # earlier runs are kept, newest last
            res.setdefault("embed_whole_corpus_previous", []).append(res["embed_whole_corpus"])
        res["embed_whole_corpus"] = whole_corpus(args)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["embed_whole_corpus"]))
        return
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the fresh MLM head's load report
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    posts, read, read_s = sample_posts([args.posts], args.n_posts, 0.02)
    res: dict = {
        "command": "flock /tmp/ntulm-heavy.lock python " + " ".join(sys.argv),
        "uptime": uptime,
        "machine": cpu_info(),
        "cpu_native_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "backbone": "all-MiniLM-L6-v2",
        "read_posts_per_s": round(read / read_s, 1),
    }
    train_posts = posts[: args.train_posts]
    base = {
        "batch_size": args.batch_size,
        "max_steps": args.steps,
        "max_epochs": 1,  # --steps must fit in one epoch: ours stops there, HF would go on
        "use_ntu": False,  # the same network as the HF baseline
        "head_warmup_steps": 0,
        "eval_max_posts": 300,
        "checkpoint_every": 0,
        "progress": False,
        "num_threads": args.threads,
    }
    with tempfile.TemporaryDirectory() as tmp:
        new_cfg = LMConfig.build({**base, "train_dtype": "bfloat16", "group_by_length": True})
        old_cfg = LMConfig.build({**base, "train_dtype": "float32", "group_by_length": True})
        # the baseline: float32 with batches in sampling order, padded to their longest
        padded_cfg = LMConfig.build({**base, "train_dtype": "float32", "group_by_length": False})
        train = {
            "posts": len(train_posts),
            "batch_size": args.batch_size,
            "steps": args.steps,
            "ours_bf16_grouped": ours(train_posts, new_cfg, Path(tmp) / "bf16"),
            "ours_fp32_grouped_old_default": ours(train_posts, old_cfg, Path(tmp) / "fp32"),
            "ours_fp32_padded": ours(train_posts, padded_cfg, Path(tmp) / "fp32_padded"),
            "hf_trainer_bf16_group_by_length": hf_trainer(train_posts, new_cfg, f"{tmp}/hf"),
        }
        new, old, hf = (
            train["ours_bf16_grouped"],
            train["ours_fp32_grouped_old_default"],
            train["hf_trainer_bf16_group_by_length"],
        )
        train["note"] = (
            "ours bf16 and fp32 grouped see the identical batches (same tokens); fp32 padded sees "
            "the same posts in sampling order; the HF Trainer groups "
            "and masks its own way (tokens_seen differs slightly); held-out bits: float32, same "
            "300 held-out posts and masked positions for all three"
        )
        res["train"] = train
        padded = train["ours_fp32_padded"]
        # the headline: bf16 + length grouping against the float32 padded baseline; the
        # dtype alone: against float32 with the same grouped batches
        res["train_speedup_vs_fp32"] = round(new["tokens_per_s"] / padded["tokens_per_s"], 3)
        res["train_speedup_vs_fp32_grouped"] = round(new["tokens_per_s"] / old["tokens_per_s"], 3)
        res["train_bits_bf16_minus_fp32"] = round(new["held_out_bits"] - old["held_out_bits"], 4)
        res["train_bits_bf16_minus_fp32_padded"] = round(
            new["held_out_bits"] - padded["held_out_bits"], 4
        )
        res["train_ratio"] = round(new["tokens_per_s"] / hf["tokens_per_s"], 3)
    save(res, args.out)  # the training part on disk now, in case the encoding part fails

    # -- encoding: the real NTULM network (NTU token from the IRA KGE); weights do not matter
    from ntulm.kge import NTUEmbeddings

    ntu = NTUEmbeddings.load(args.ntu)
    cfg = LMConfig.build({"progress": False})
    torch.manual_seed(0)
    model, _ = NTULM.from_backbone(cfg, ntu.dim)
    model.ntu = ntu
    model.eval()
    old_mod = old_encode_module(args.old_rev)
    pairs = [(p, "ira") for p in posts]
    bs = args.embed_batch_size
    # The encoder alone in every figure: concat_ntu=False (the old code has no concatenation; the
    # recommended embedding appends e_ntu after encoding, a copy of (N, 200) floats)
    encoder = {"concat_ntu": False}
    enc_bf16 = functools.partial(encode, batch_size=bs, dtype="bfloat16", **encoder)
    enc: dict = {"posts": len(posts), "batch_size": bs, "dtype": "bfloat16"}
    with tempfile.TemporaryDirectory() as tmp:
        enc_bf16(model, posts[:256])  # warm-up
        enc["old_embed_posts_per_s"] = posts_per_s(
            lambda: old_mod.embed_to_parquet(
                model, pairs, f"{tmp}/old.parquet", batch_size=bs, dtype="bfloat16"
            ),
            len(posts),
        )
        enc["new_embed_posts_per_s"] = posts_per_s(
            lambda: embed_to_parquet(
                model, pairs, f"{tmp}/new.parquet", batch_size=bs, dtype="bfloat16", **encoder
            ),
            len(posts),
        )
    enc["embed_speedup"] = round(enc["new_embed_posts_per_s"] / enc["old_embed_posts_per_s"], 3)
    few = posts[:1000]
    ref = encode(model, few, batch_size=bs, **encoder)  # float32
    twin = copy.deepcopy(model).to(torch.bfloat16)  # the alternative: bf16 weights, no autocast
    enc["bf16_weights_copy_encode_posts_per_s"] = posts_per_s(
        lambda: encode(twin, posts, batch_size=bs, **encoder), len(posts)
    )
    enc["min_cosine_to_fp32"] = {
        "old_bf16_autocast": cosine_min(ref, old_mod.encode(model, few, dtype="bfloat16")),
        "new_bf16_autocast": cosine_min(ref, encode(model, few, dtype="bfloat16", **encoder)),
        "bf16_weights_copy": cosine_min(ref, encode(twin, few, **encoder)),
    }
    read_rate = res["read_posts_per_s"]
    for tag in ("old", "new"):
        rate = enc[f"{tag}_embed_posts_per_s"]
        enc[f"whole_corpus_minutes_estimate_{tag}"] = round(
            IRA_POSTS * (1 / read_rate + 1 / rate) / 60, 1
        )
    enc["whole_corpus_estimate_note"] = (
        f"{IRA_POSTS:,} posts x (1/read rate + 1/embed rate); to be measured with `ntulm embed`"
    )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        SentenceTransformer = None
    if SentenceTransformer is not None:
        texts = [normalize_text(p.text, cfg.text) for p in posts]
        st = SentenceTransformer(
            resolve_backbone(cfg.backbone), device="cpu", model_kwargs={"dtype": torch.bfloat16}
        )
        st.max_seq_length = cfg.max_length
        st.encode(texts[:256], batch_size=bs)
        enc["ntulm_encode_posts_per_s"] = posts_per_s(lambda: enc_bf16(model, posts), len(posts))
        enc["st_encode_posts_per_s"] = posts_per_s(
            lambda: st.encode(texts, batch_size=bs, show_progress_bar=False), len(texts)
        )
        res["encode_ratio"] = round(
            enc["ntulm_encode_posts_per_s"] / enc["st_encode_posts_per_s"], 3
        )
    res["encode"] = enc
    if args.whole_corpus_model:
        res["embed_whole_corpus"] = whole_corpus(args)
    res["embed_whole_corpus_old"] = {
        "command": "ntulm embed --model <IRA NTULM> --posts ../shared/data/ira --out FILE "
        "--dtype bfloat16 --batch-size 128",
        "code": "before this change (bf16 autocast, chunks of 4,096)",
        "posts": IRA_POSTS,
        "peak_rss_mb": 1445.9,
        "wall_s": 2454.0,
        "posts_per_s": 683.3,
    }
    save(res, args.out)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
