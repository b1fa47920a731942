"""Why NTULM gains what it gains: diagnostics on the models an ``ntulm run`` saved.

    python benchmarks/diagnose_ntu.py --run runs/paper_cpu [--out benchmarks/results/paper/diagnosis.json]

1. **Does the fine-tuned model use the NTU token for MLM?** Held-out bits of each NTULM with its
   posts' true e_ntu, with the table mean for every post (no NTU information), and with e_ntu
   shuffled across posts (wrong NTUs). Equal bits mean the model ignores the token.
2. **Where is the NTU information in the post embedding?** The account-category task (split by
   author, as in the report) with the MLP on: the paper's pooling (mean over word pieces and
   the NTU token), the word pieces only, the NTU token's final state only, and the raw e_ntu
   (what BERT-post-concat adds). Same MLP, training posts and seeds as the report.
3. **Hashtag task duplicates**: share of validation posts whose text (hashtag removed,
   lower-cased, URLs/mentions/``RT`` prefix dropped) also occurs among the training posts of the
   same class.

Design decisions are made on validation posts only: this script never reads a task's test
split. The probe scores on half of the validation split and early-stops on the other half
(``ntulm.evaluate.protocol.validation_task``). Reads the corpus and rebuilds the tasks exactly
as the run did (same config and seeds).
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
from ntulm.evaluate.protocol import validation_task
from ntulm.evaluate.runner import evaluate_task
from ntulm.kge import NTUEmbeddings
from ntulm.lm.data import fixed_eval_masks, ntu_vectors, tokenize
from ntulm.lm.encode import encode
from ntulm.lm.model import NTULM
from ntulm.lm.train import evaluate_bits, split_posts
from ntulm.pipeline import PipelineConfig
from ntulm.pipeline.run import Pipeline, _lookup, _slug, finetune_sample, overlap_flags


def pooled(model: NTULM, posts, batch_size: int = 128) -> dict[str, np.ndarray]:
    """Per post: the paper's mean over word pieces + NTU token, the word pieces only and the NTU
    token only (the two halves of ``pooling="mean+ntu"``); bfloat16 as in the report."""
    kw = {"batch_size": batch_size, "dtype": "bfloat16"}
    out = {"paper": encode(model, posts, **kw)}
    if not model.use_ntu:
        return {**out, "words": out["paper"]}  # no NTU token: the mean is over word pieces
    both = encode(model, posts, pooling="mean+ntu", **kw)
    h = model.hidden_size
    return {**out, "words": both[:, :h], "ntu_slot": both[:, h:]}


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
    sample = finetune_sample(posts, tasks, cfg)
    del posts
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

    # 2. pooling probe on one task, on its validation split (the test split is not read)
    spec, task = next((s, t) for s, t in tasks if t.name == args.task)
    task = validation_task(task, cfg.eval.seed)
    probe: dict = {}
    splits = {"train": task.train, "val": task.val, "test": task.test}
    flags = overlap_flags([(spec, task)], emb, cfg.overlap_types())[task.name]
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
        embed = _lookup(task, arrays)
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
    res["pooling_probe"] = {
        "task": task.name,
        "metric": task.metrics[0],
        "design": task.info["design"],
        "results": probe,
    }

    # 3. duplicate texts in the hashtag task: validation posts against training posts
    ht = next(
        (t for _, t in tasks if t.name.startswith("ira_hashtag") or "hashtag" in t.name), None
    )
    if ht is not None:
        seen = {(int(y), _norm_text(q.text)) for q, y in zip(ht.train, ht.y_train, strict=True)}
        dup = np.array(
            [(int(y), _norm_text(q.text)) in seen for q, y in zip(ht.val, ht.y_val, strict=True)]
        )
        res["hashtag_duplicates"] = {
            "task": ht.name,
            "n_val": len(dup),
            "val_with_same_text_and_class_in_train": float(dup.mean()),
        }
        print(
            f"{ht.name}: {dup.mean():.1%} of validation posts have a same-class duplicate text "
            "in train",
            file=sys.stderr,
        )
    res["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        write_json(Path(args.out), res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
