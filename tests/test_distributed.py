"""Multi-process runs (2 gloo processes under torchrun) against one process: the sharded NTU
embeddings (``kge/sharded.py``) and data-parallel MLM fine-tuning (``lm/train.py``).

Each test starts ``torchrun`` (10-20 s on an idle 2-core machine, minutes under load), so they
are marked ``distributed``: CI runs them (``.ci/run``), a developer's default ``pytest`` leaves
them out (``pytest -m distributed`` runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ntulm.kge import NTUEmbeddings
from ntulm.kge.config import KGEConfig
from ntulm.kge.synthetic import write_planted_graph
from ntulm.kge.train import train_kge

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
# Tables of odd sizes (ranks hold 1 row more or less), a short last chunk, uniform negatives.
KGE = dict(
    dimension=16,
    num_epochs=3,
    batch_size=700,
    num_batch_negs=50,
    num_uniform_negs=20,
    lr=0.1,
    compute_dtype="float32",
    eval_fraction=0.05,
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("graph")
    write_planted_graph(d, num_users=301, num_hashtags=157, edges_per_user=12)
    return d


@pytest.fixture(scope="module")
def single(graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("kge1")
    emb, metrics = train_kge(graph, out, KGEConfig(**KGE), progress=False)
    return emb, metrics


def _close(a: NTUEmbeddings, b: NTUEmbeddings, tol: float = 1e-5) -> None:
    for t in a.tables:
        np.testing.assert_allclose(a.tables[t], b.tables[t], atol=tol, rtol=0)
    for r in a.relations:
        np.testing.assert_allclose(a.relations[r], b.relations[r], atol=tol, rtol=0)


def test_sharded_kge_matches_one_process_and_halves_tables(graph, single, tmp_path):
    """`ntulm train-kge --nproc 2`: the same tables (float sums in another order: 1e-5) and
    MRR as one process, each rank holding half of each table."""
    out = tmp_path / "kge2"
    overrides = [f"{k}={v}" for k, v in KGE.items()]
    cmd = [sys.executable, "-m", "ntulm", "-q", "train-kge", "--nproc", "2"]
    res = _run([*cmd, "--graph", str(graph), "--out", str(out), *overrides])
    assert "rank 1: rows" in res.stdout
    emb1, m1 = single
    _close(emb1, NTUEmbeddings.load(out))
    m2 = json.loads((out / "metrics.json").read_text())
    mrr1, mrr2 = m1["link_prediction"]["overall"]["mrr"], m2["link_prediction"]["overall"]["mrr"]
    assert mrr1 > 2 * m1["random_baseline"]["overall"]["mrr"]  # it learned something
    assert abs(mrr2 - mrr1) <= 1e-4
    ranks = m2["distributed"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    for t, n in ranks[0]["table_rows"].items():
        assert sorted(r["rows"][t] for r in ranks) == [n // 2, n - n // 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "epoch_0003.rank0-of-2.safetensors",
        "epoch_0003.rank1-of-2.safetensors",
    ]


def test_sharded_kge_resume_is_exact(graph, single, tmp_path):
    """2 ranks killed after epoch 1 and resumed from their shards = one uninterrupted process."""
    out = tmp_path / "kge2"
    worker = ROOT / "tests" / "workers" / "kge_sharded.py"
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    _run([*run, str(worker), str(graph), str(out), json.dumps(KGE)])
    _close(single[0], NTUEmbeddings.load(out))


# ---------------------------------------------------------------------------- fine-tuning
# Same global batch in both runs. Dropout is off in this backbone: a rank draws dropout masks
# for its rows only, so with dropout the curves agree in distribution, not step by step.
LOSS_TOL = 1e-4  # measured max |2-proc - 1-proc| per step: ~1e-6 (float sums, 1 vs 2 threads)
LM = dict(
    batch_size=8, max_epochs=2, max_length=16, progress=False, patience=5, train_dtype="float32"
)


@pytest.fixture(scope="module")
def lm_inputs(tmp_path_factory, tokenizer):
    import torch
    from transformers import BertForMaskedLM

    from conftest import tiny_bert_config
    from ntulm.posts import Post, UserRef

    d = tmp_path_factory.mktemp("lm")
    cfg = tiny_bert_config(tokenizer)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(d / "bert")
    tokenizer.save_pretrained(d / "bert")
    words = "the cat sat on a mat vote today news about election in ohio great rally".split()
    rng = np.random.default_rng(0)
    with (d / "posts.jsonl").open("w") as fh:
        for i in range(60):  # lengths vary: padding differs between a batch and its halves
            text = " ".join(rng.choice(words, size=int(rng.integers(2, 12))))
            tags = ["maga"] if i % 3 == 0 else ["news"] if i % 5 == 0 else []
            post = Post(id=str(i), text=text, author=UserRef(id=str(i % 4)), hashtags=tags)
            fh.write(json.dumps(post.to_json()) + "\n")
    rng = np.random.default_rng(1)
    NTUEmbeddings(
        tables={
            "user": rng.normal(size=(3, 8)).astype(np.float32),
            "hashtag": rng.normal(size=(2, 8)).astype(np.float32),
        },
        keys={"user": ["id:1", "id:2", "id:3"], "hashtag": ["maga", "news"]},
        relations={},
        user_handles=[None, None, None],
        config={},
    ).save(d / "ntu")
    return d


def _finetune_one_process(d: Path, out: Path, **kw):
    from ntulm.lm import LMConfig, finetune
    from ntulm.posts import PostReader

    posts = [p for p, _ in PostReader().iter_posts([str(d / "posts.jsonl")])]
    cfg = LMConfig.build({"backbone": str(d / "bert"), **LM, **kw})
    return finetune(posts, cfg, out, ntu=NTUEmbeddings.load(d / "ntu"))


def _same_weights(a: Path, b: Path, tol: float) -> None:
    from safetensors.torch import load_file

    wa, wb = (load_file(str(next(p.glob("*.safetensors")))) for p in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert float((wa[k] - wb[k]).abs().max()) <= tol, (k, float((wa[k] - wb[k]).abs().max()))


def test_ddp_finetune_loss_curve_equals_one_process(lm_inputs, tmp_path):
    """`ntulm finetune --nproc 2` (DDP, NTU projection): per-step loss of the global batch and
    held-out bits as one process; the model written once, by rank 0."""
    d = lm_inputs
    one = _finetune_one_process(d, tmp_path / "one")
    cmd = [sys.executable, "-m", "ntulm", "-q", "finetune", "--nproc", "2"]
    args = [
        "--posts",
        str(d / "posts.jsonl"),
        "--ntu",
        str(d / "ntu"),
        "--out",
        str(tmp_path / "two"),
    ]
    res = _run([*cmd, *args, f"backbone={d / 'bert'}", *(f"{k}={v}" for k, v in LM.items())])
    assert "(2 processes)" in res.stdout
    two = json.loads((tmp_path / "two" / "train_result.json").read_text())
    assert two["world_size"] == 2 and len(two["train_loss"]) == len(one.train_loss) > 10
    diff = np.abs(np.array(two["train_loss"]) - np.array(one.train_loss)).max()
    assert diff <= LOSS_TOL, diff
    assert two["eval_bits"] == pytest.approx(one.eval_bits, abs=LOSS_TOL)
    _same_weights(tmp_path / "one", tmp_path / "two", 1e-4)


def test_ddp_finetune_fusion_modules_resume_exactly(lm_inputs, tmp_path):
    """DDP with per-type NTU tokens (an absent type's vector unused in a step) and NTU dropout,
    2 ranks killed at step 5 and resumed from rank 0's checkpoint = one uninterrupted process."""
    d = lm_inputs
    kw = dict(ntu_tokens="per_type", ntu_dropout=0.3, checkpoint_every=2)
    one = _finetune_one_process(d, tmp_path / "one", **kw)
    worker = ROOT / "tests" / "workers" / "finetune_ddp.py"
    cfg = json.dumps({"backbone": str(d / "bert"), **LM, **kw})
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    out = tmp_path / "two"
    _run([*run, str(worker), str(d / "posts.jsonl"), str(d / "ntu"), str(out), cfg])
    two = json.loads((out / "train_result.json").read_text())
    diff = np.abs(np.array(two["train_loss"]) - np.array(one.train_loss)).max()
    assert diff <= LOSS_TOL, diff
    _same_weights(tmp_path / "one", out, 1e-4)
