"""Why NTULM gains what it gains: diagnostics on the models an ``ntulm run`` saved.

    python benchmarks/diagnose_ntu.py --run runs/paper_cpu [--out benchmarks/results/paper/diagnosis.json]

1. **Does the fine-tuned model use the NTU token for MLM?** Held-out bits of each NTULM with its
   posts' true e_ntu, with the table mean for every post (no NTU information), and with e_ntu
   shuffled across posts (wrong NTUs). Equal bits mean the model ignores the token.
2. **Where is the NTU information in the post embedding?** The account-category task (split by
   author, as in the report) with the MLP on: the paper's pooling (mean over word pieces and
   the NTU token), the word pieces only, the NTU token's final state only, and the raw e_ntu
   (what BERT-post-concat adds). Same MLP, splits and seeds as the report.
3. **Hashtag task duplicates**: share of test posts whose text (hashtag removed, lower-cased,
   URLs/mentions/``RT`` prefix dropped) also occurs among the training posts of the same class.

Reads the corpus and rebuilds the tasks exactly as the run did (same config and seeds).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ntulm.artifacts import write_json
from ntulm.evaluate.runner import evaluate_task
from ntulm.kge import NTUEmbeddings
from ntulm.lm.data import fixed_eval_masks, length_grouped_batches, ntu_vectors, pad, tokenize
from ntulm.lm.model import NTULM
from ntulm.lm.train import evaluate_bits, split_posts
from ntulm.pipeline import PipelineConfig
from ntulm.pipeline.run import Pipeline, _slug


@torch.inference_mode()
def pooled(model: NTULM, posts, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Per post: mean over word pieces + NTU token (paper), word pieces only, NTU token only."""
    model.eval()
    tokens = tokenize(
        [p.text for p in posts], model.tokenizer, model.cfg.max_length, model.cfg.text
    )
    e_ntu = ntu_vectors(posts, model.ntu, model.cfg.ntu_types)[0] if model.use_ntu else None
    h = model.hidden_size
    out = {k: np.zeros((len(posts), h), np.float32) for k in ("paper", "words", "ntu_slot")}
    for idx in length_grouped_batches(np.array([len(t) for t in tokens]), batch_size):
        ids, mask = pad([tokens[i] for i in idx], model.tokenizer.pad_token_id)
        e = torch.from_numpy(e_ntu[idx]) if e_ntu is not None else None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hid, full = model.hidden_states(ids, mask, e)
        hid, full = hid.float(), full.float().unsqueeze(-1)
        out["paper"][idx] = ((hid * full).sum(1) / full.sum(1)).numpy()
        t = mask.shape[1]
        w = full[:, :t]
        out["words"][idx] = ((hid[:, :t] * w).sum(1) / w.sum(1)).numpy()
        if model.use_ntu:
            out["ntu_slot"][idx] = hid[:, t].numpy()
    if not model.use_ntu:
        del out["ntu_slot"]
    return out


def _norm_text(text: str) -> str:
    text = re.sub(r"^rt @\w+:?", " ", text.lower())
    text = re.sub(r"https?://\S+|@\w+", " ", text)
    return " ".join(text.split())


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True, help="an `ntulm run` output directory")
    ap.add_argument("--out", help="write the figures here as JSON")
    ap.add_argument("--task", default="ira_account_category")
    args = ap.parse_args()
    torch.set_num_threads(2)
    run = Path(args.run)
    cfg = PipelineConfig.model_validate(json.loads((run / "config.json").read_text()))
    t0 = time.perf_counter()
    p = Pipeline(cfg, run / "diagnose", progress=False)
    posts = p.read_corpus()
    tasks = p.build_tasks(posts)
    print(f"corpus and tasks rebuilt in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    emb = NTUEmbeddings.load(run / "kge")
    res: dict = {"run": str(run)}

    # 1. perplexity ablation, on the run's held-out fine-tuning posts
    held = {q.id for _, t in tasks for q in (*t.val, *t.test)}
    pool = [q for q in posts if q.id not in held]
    take = np.random.default_rng(cfg.lm.seed).permutation(len(pool))[: cfg.lm_posts]
    sample = [pool[i] for i in sorted(take)]
    del posts, pool
    models = {v.name: NTULM.load(run / "lm" / _slug(v.name), ntu=emb) for v in cfg.model_variants()}
    res["perplexity_bits"] = {}
    for name, model in models.items():
        lcfg = model.cfg
        _, ev = split_posts(len(sample), lcfg)
        ev_posts = [sample[i] for i in ev]
        toks = tokenize([q.text for q in ev_posts], model.tokenizer, lcfg.max_length, lcfg.text)
        masks = fixed_eval_masks(toks, model.tokenizer, lcfg.mlm_probability, lcfg.seed)
        row = {}
        if model.use_ntu:
            e, known = ntu_vectors(ev_posts, emb, lcfg.ntu_types)
            mean = np.broadcast_to(np.asarray(emb.mean, np.float32), e.shape).copy()
            shuffled = e[np.random.default_rng(0).permutation(len(e))]
            row = {
                "true_ntu": evaluate_bits(model, masks, e),
                "mean_ntu": evaluate_bits(model, masks, mean),
                "shuffled_ntu": evaluate_bits(model, masks, shuffled),
                "overlap_share": float(known.mean()),
            }
        else:
            row = {"no_ntu": evaluate_bits(model, masks, None)}
        res["perplexity_bits"][name] = row
        print(name, {k: round(v, 4) for k, v in row.items()}, file=sys.stderr)

    # 2. pooling probe on one task
    spec, task = next((s, t) for s, t in tasks if t.name == args.task)
    probe: dict = {}
    splits = {"train": task.train, "val": task.val, "test": task.test}
    overlap_types = sorted(
        {t for v in cfg.variants if v.use_ntu or v.post_concat_of for t in v.ntu_types}
    )
    flags = ntu_vectors(task.test, emb, overlap_types)[1]
    reps: dict[str, dict[str, np.ndarray]] = {}
    for name, model in models.items():
        per_split = {s: pooled(model, ps) for s, ps in splits.items()}
        for kind in per_split["train"]:
            reps[f"{name} / {kind}"] = {s: per_split[s][kind] for s in splits}
    for types in (["author"], ["author", "hashtag"]):
        reps[f"e_ntu only ({'+'.join(types)})"] = {
            s: ntu_vectors(ps, emb, types)[0] for s, ps in splits.items()
        }
    for label, arrays in reps.items():
        ids = {id(task.train): "train", id(task.val): "val", id(task.test): "test"}

        def embed(ps, arrays=arrays, ids=ids):
            x = arrays[ids[id(ps)]]
            return x, np.zeros(len(x), dtype=bool)

        scores = [
            evaluate_task(task, embed, cfg.eval, seed=s, overlap=flags)["metrics"][task.metrics[0]]
            for s in cfg.seeds
        ]
        probe[label] = {
            "mean": float(np.mean(scores)),
            "std": float(np.std(scores)),
            "scores": scores,
        }
        print(f"{task.name} {label}: {np.mean(scores):.3f} ± {np.std(scores):.3f}", file=sys.stderr)
    res["pooling_probe"] = {"task": task.name, "metric": task.metrics[0], "results": probe}

    # 3. duplicate texts in the hashtag task
    ht = next(
        (t for _, t in tasks if t.name.startswith("ira_hashtag") or "hashtag" in t.name), None
    )
    if ht is not None:
        seen = {(int(y), _norm_text(q.text)) for q, y in zip(ht.train, ht.y_train, strict=True)}
        dup = np.array(
            [(int(y), _norm_text(q.text)) in seen for q, y in zip(ht.test, ht.y_test, strict=True)]
        )
        res["hashtag_duplicates"] = {
            "task": ht.name,
            "n_test": len(dup),
            "test_with_same_text_and_class_in_train": float(dup.mean()),
        }
        print(
            f"{ht.name}: {dup.mean():.1%} of test posts have a same-class duplicate text in train",
            file=sys.stderr,
        )
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        write_json(Path(args.out), res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
