"""Benchmark of the LM stage against what a user would otherwise pick, in one run, on the same
backbone (all-MiniLM-L6-v2), posts and batch size:

- MLM training tokens/s: ``ntulm`` (NTU token, head only at masked positions, length-grouped
  batches) vs the Hugging Face ``Trainer`` with ``DataCollatorForLanguageModeling``;
- encoding posts/s: ``NTULM.encode`` (one extra token per post) vs ``SentenceTransformer.encode``;
- peak RSS of ``ntulm embed`` streaming the IRA corpus to Parquet (a subprocess).

Prints one JSON line and writes ``benchmarks/results/bench_lm.json``.

    python benchmarks/bench_lm.py [--posts /work/shared/data/ira] [--ntu /tmp/ira_kge]
"""

from __future__ import annotations

import argparse
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

from ntulm.lm import NTULM, LMConfig, finetune  # noqa: E402
from ntulm.lm.config import resolve_backbone  # noqa: E402
from ntulm.lm.text import normalize_text  # noqa: E402
from ntulm.posts import PostReader  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_lm.json"


def sample_posts(paths: list[str], n: int, rate: float, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for post, _ in PostReader().iter_posts(paths):
        if rng.random() < rate:
            out.append(post)
            if len(out) == n:
                break
    return out


def ntu_table(path: str | None):
    from ntulm.kge import NTUEmbeddings

    if path and Path(path).is_dir():
        return NTUEmbeddings.load(path)
    rng = np.random.default_rng(0)  # throughput does not depend on the values
    return NTUEmbeddings(
        {"user": rng.normal(size=(100, 200)).astype(np.float32)},
        {"user": [f"id:{i}" for i in range(100)]},
        {},
        [None] * 100,
        {},
    )


def hf_trainer_tokens_per_s(texts: list[str], cfg: LMConfig, steps: int, out: str) -> float:
    """HF ``Trainer`` + ``DataCollatorForLanguageModeling`` on the same texts; timed from the end of
    the first step (set-up and first-step overheads excluded, in the baseline's favour)."""
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
    model = AutoModelForMaskedLM.from_pretrained(path)
    data = [
        {"input_ids": ids}
        for ids in tok(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    ]
    base = DataCollatorForLanguageModeling(tok, mlm_probability=cfg.mlm_probability)
    seen: list[int] = []

    def collate(features):
        batch = base(features)
        seen.append(int(batch["attention_mask"].sum()))
        return batch

    class Clock(TrainerCallback):
        t0 = t1 = 0.0
        tokens_before = 0

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            if state.global_step == 1:
                Clock.t0, Clock.tokens_before = time.perf_counter(), sum(seen[:1])

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            Clock.t1 = time.perf_counter()

    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=cfg.batch_size,
        max_steps=steps,
        learning_rate=cfg.lr,
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
    return (sum(seen[1:steps])) / (Clock.t1 - Clock.t0)


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its peak RSS (VmHWM, polled from /proc) in MB and its wall time in s. Polling
    avoids ``RUSAGE_CHILDREN``, which counts the parent's pages a forked child shares before exec."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"ntulm embed failed with exit code {proc.returncode}")
    return peak / 1024, time.perf_counter() - t0


def ntulm_round(posts: list, cfg: LMConfig, ntu, out: Path) -> float:
    return finetune(posts, cfg, out, ntu=ntu).tokens_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", default="/work/shared/data/ira")
    ap.add_argument("--ntu", default="/tmp/ira_kge")
    ap.add_argument("--n-posts", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of each trainer")
    ap.add_argument(
        "--embed-limit",
        type=int,
        default=0,
        help="ntulm embed --limit (0: whole corpus); "
        "also run at a quarter of it to show memory does not grow with the posts",
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.manual_seed(0)
    posts = sample_posts([args.posts], args.n_posts, 0.01)
    ntu = ntu_table(args.ntu)
    cfg = LMConfig.build(
        {
            "batch_size": args.batch_size,
            "max_steps": args.steps,
            "max_epochs": 1,
            "head_warmup_steps": 0,
            "progress": False,
            "eval_max_posts": 64,
            "checkpoint_every": 0,
        }
    )
    texts = [normalize_text(p.text, cfg.text) for p in posts]
    res: dict = {
        "backbone": cfg.backbone,
        "posts": len(posts),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "max_length": cfg.max_length,
        "torch_threads": torch.get_num_threads(),
        "ntu": args.ntu if Path(args.ntu).is_dir() else "random (dim 200)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        # The CPU is shared: alternate the two trainers and report the median of each.
        ours, hf = [], []
        for r in range(args.rounds):
            ours.append(ntulm_round(posts, cfg, ntu, Path(tmp) / "ntulm"))
            hf.append(hf_trainer_tokens_per_s(texts, cfg, args.steps, str(Path(tmp) / f"hf{r}")))
        res["train_tokens_per_s_rounds"] = [round(x, 1) for x in ours]
        res["hf_trainer_tokens_per_s_rounds"] = [round(x, 1) for x in hf]
        res["train_tokens_per_s"] = round(float(np.median(ours)), 1)
        res["hf_trainer_tokens_per_s"] = round(float(np.median(hf)), 1)
        res["train_ratio"] = round(res["train_tokens_per_s"] / res["hf_trainer_tokens_per_s"], 3)

        model = NTULM.load(Path(tmp) / "ntulm")
        model.encode(posts[:64], batch_size=64)  # warm-up
        t0 = time.perf_counter()
        model.encode(posts, batch_size=64)
        res["encode_posts_per_s"] = round(len(posts) / (time.perf_counter() - t0), 1)
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(resolve_backbone(cfg.backbone), device="cpu")
        st.max_seq_length = cfg.max_length
        st.encode(texts[:64], batch_size=64)
        t0 = time.perf_counter()
        st.encode(texts, batch_size=64, show_progress_bar=False)
        res["st_encode_posts_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
        res["encode_ratio"] = round(res["encode_posts_per_s"] / res["st_encode_posts_per_s"], 3)

        cmd = [
            sys.executable,
            "-c",
            "import sys; from ntulm.cli import main; sys.exit(main())",
            "-q",
            "embed",
            "--model",
            str(Path(tmp) / "ntulm"),
            "--posts",
            args.posts,
            "--out",
            str(Path(tmp) / "emb.parquet"),
            "--limit",
            str(args.embed_limit),
        ]
        import pyarrow.parquet as pq

        for limit in sorted({args.embed_limit // 4, args.embed_limit} - {0}) or [0]:
            rss, secs = peak_rss_mb([*cmd[:-1], str(limit)])
            n = pq.ParquetFile(Path(tmp) / "emb.parquet").metadata.num_rows
            res.setdefault("embed_runs", []).append(
                {"posts": n, "peak_rss_mb": round(rss, 1), "seconds": round(secs, 1)}
            )
        res["embed_posts"] = res["embed_runs"][-1]["posts"]
        res["embed_peak_rss_mb"] = res["embed_runs"][-1]["peak_rss_mb"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
