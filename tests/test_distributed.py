"""Multi-process runs (2 gloo processes under torchrun) against one process: the sharded NTU
embeddings (``kge/sharded.py``) and data-parallel MLM fine-tuning (``lm/train.py``).

Each test starts ``torchrun`` (about 5-10 s of process start-up per launch)."""

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
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
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
