"""engine=pbg: PyTorch-BigGraph behind the KGE seam (``kge/pbg.py``, ``kge/pbg_run.py``).

The config mapping, the refusals and the input conversion run in the default suite (no PBG
training). The training runs (1 PBG rank in this process vs 2 ranks in PBG's distributed mode,
each ~10 processes importing torch: a minute under load) are marked ``distributed``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ntulm.cli import main
from ntulm.errors import ConfigError
from ntulm.kge import NTUEmbeddings
from ntulm.kge.config import KGEConfig, RelationConfig
from ntulm.kge.evaluate import EdgeSet
from ntulm.kge.pbg import PBGError, check_mappable, partitions_for, pbg_schema, require_pbg
from ntulm.kge.synthetic import write_planted_graph

ROOT = Path(__file__).resolve().parents[1]
RELS = [RelationConfig(name="authored"), RelationConfig(name="favorited", operator="none")]
# 8 planted communities: a trained model ranks the held-out hashtags well above random (~0.17
# vs 0.03), so a wrong conversion (ids, partitions, relation vectors) shows in the MRR.
PBG = dict(
    dimension=16,
    num_epochs=4,
    batch_size=200,
    num_batch_negs=50,
    num_uniform_negs=20,
    lr=0.1,
    eval_fraction=0.1,
    min_steps=0,
    engine="pbg",
    pbg_workers=1,  # no HOGWILD race inside a rank: less run-to-run noise
)
# 1 vs 2 ranks at the same P=2, one worker per rank: measured 1 rank 0.1704, 0.1715, 0.1767;
# 2 ranks 0.1600, 0.1658, 0.1395 (3-21% lower: PBG syncs the relation vectors asynchronously,
# the ranks take buckets in the order they finish, and it orders buckets with an unseeded
# generator, so no two runs are equal; on the IRA graph its runs of one setting spread 22%).
# The tolerance is set for that spread; a broken conversion scores near random (~0.03), which
# the 3x-random assertion catches.
MRR_TOL = 0.35


def test_schema_maps_each_field():
    cfg = KGEConfig(
        dimension=24, lr=0.03, relation_lr=0.2, num_epochs=3, batch_size=1000, num_batch_negs=40,
        num_uniform_negs=7, init_scale=0.01, loss_fn="softmax", engine="pbg",
    )  # fmt: skip
    s = pbg_schema(cfg, RELS, ["hashtag", "user"], 4, Path("/w"), workers=3)
    assert s["entities"] == {"hashtag": {"num_partitions": 4}, "user": {"num_partitions": 4}}
    assert s["relations"][1] == {
        "name": "favorited", "lhs": "user", "rhs": "hashtag", "operator": "none"
    }  # fmt: skip
    assert s["relations"][0]["operator"] == "translation"
    assert (s["comparator"], s["global_emb"], s["bias"]) == ("dot", False, False)
    for ours, theirs in [("dimension", "dimension"), ("lr", "lr"), ("num_epochs", "num_epochs"),
                         ("batch_size", "batch_size"), ("num_batch_negs", "num_batch_negs"),
                         ("num_uniform_negs", "num_uniform_negs"), ("init_scale", "init_scale"),
                         ("loss_fn", "loss_fn"), ("relation_lr", "relation_lr")]:  # fmt: skip
        assert s[theirs] == getattr(cfg, ours), ours
    assert s["eval_fraction"] == 0.0 and s["workers"] == 3 and s["num_machines"] == 1
    assert "distributed_init_method" not in s
    d = pbg_schema(cfg, RELS, ["user"], 2, Path("/w"), machines=2, init_method="tcp://h:1")
    assert d["distributed_init_method"] == "tcp://h:1" and d["num_partition_servers"] == -1
    pytest.importorskip("torchbiggraph")
    from torchbiggraph.config import ConfigSchema

    ConfigSchema.from_dict({**s, "relations": s["relations"]})  # PBG accepts it


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"neg_reduction": "sum"}, "neg_reduction=sum"),
        ({"weights": "loss"}, "weights=loss"),
        ({"compute_dtype": "bfloat16"}, "compute_dtype=bfloat16"),
        ({"pbg_machines": 2}, "pbg_init_method"),
        ({"pbg_rank": 1}, "pbg_rank=1"),
    ],
)
def test_unmappable_options_are_refused_by_name(override, field):
    with pytest.raises(ConfigError, match=field):
        check_mappable(KGEConfig(engine="pbg", **override))


def test_fewer_partitions_than_ranks_refused():
    assert partitions_for(KGEConfig(engine="pbg"), 1) == 1
    assert partitions_for(KGEConfig(engine="pbg"), 2) == 2
    assert partitions_for(KGEConfig(engine="pbg", pbg_partitions=4), 2) == 4
    with pytest.raises(ConfigError, match="pbg_partitions=1 < 2 ranks"):
        partitions_for(KGEConfig(engine="pbg", pbg_partitions=1), 2)


def test_default_engine_keeps_fingerprints():
    """engine and the pbg_* keys at their defaults are left out of the dumped config, so the
    fingerprints of existing runs (pipeline reuse) do not change."""
    dumped = KGEConfig().model_dump(mode="json")
    assert not [k for k in dumped if k == "engine" or k.startswith("pbg_")]
    assert KGEConfig(engine="pbg").model_dump(mode="json")["engine"] == "pbg"


def test_cli_unmappable_is_one_line_error(tmp_path, capsys):
    graph = tmp_path / "g"
    write_planted_graph(graph)
    argv = ["train-kge", "--engine", "pbg", "--graph", str(graph), "--out", str(tmp_path / "o")]
    assert main([*argv, "weights=log"]) != 0
    err = capsys.readouterr().err
    assert "weights=log: PBG 1.0 edges carry no weights" in err and "Traceback" not in err


def test_missing_torchbiggraph_is_a_clear_error(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("torchbiggraph")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchbiggraph", None)  # import fails as if not installed
    with pytest.raises(PBGError, match="pip install torchbiggraph"):
        require_pbg()
    graph = tmp_path / "g"
    write_planted_graph(graph)
    argv = ["train-kge", "--engine", "pbg", "--graph", str(graph), "--out", str(tmp_path / "o")]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "needs PyTorch-BigGraph" in err and "Traceback" not in err


def test_input_buckets_hold_every_training_edge_once(tmp_path):
    """Node i is offset i // P of partition i % P: reading the buckets back gives the edges."""
    pytest.importorskip("torchbiggraph")
    from torchbiggraph.graph_storages import FileEdgeStorage, FileEntityStorage

    from ntulm.kge.pbg import write_input

    gen = torch.Generator().manual_seed(0)
    n = {"user": 11, "hashtag": 7}
    train = EdgeSet(
        torch.randint(11, (50,), generator=gen),
        torch.randint(2, (50,), generator=gen),
        torch.randint(7, (50,), generator=gen),
    )
    sizes = write_input(train, n, 3, tmp_path)
    assert sum(sizes.values()) == 50 and len(sizes) == 9
    ents = FileEntityStorage(str(tmp_path / "input"))
    assert [ents.load_count("user", q) for q in range(3)] == [4, 4, 3]
    store = FileEdgeStorage(str(tmp_path / "input" / "edges"))
    got = []
    for i in range(3):
        for j in range(3):
            e = store.load_edges(i, j)
            lhs, rhs = e.lhs.to_tensor() * 3 + i, e.rhs.to_tensor() * 3 + j
            got += list(zip(lhs.tolist(), e.rel.tolist(), rhs.tolist(), strict=True))
    want = list(zip(train.lhs.tolist(), train.rel.tolist(), train.rhs.tolist(), strict=True))
    assert sorted(got) == sorted(want)


# ------------------------------------------------------------------ training (distributed)
@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("graph")
    write_planted_graph(d, num_users=301, num_hashtags=157, communities=8, edges_per_user=12)
    return d


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.distributed
def test_pbg_one_vs_two_ranks(graph, tmp_path):
    """`ntulm train-kge --engine pbg --nproc 2` (PBG's distributed mode, P=2) against one PBG
    process at the same P: MRR within MRR_TOL, both far above random; the artifact loads with
    the graph's shapes; each rank held half of each table (its bucket, its partition server)."""
    pytest.importorskip("torchbiggraph")
    from ntulm.kge.train import train_kge

    emb1, m1 = train_kge(graph, tmp_path / "p1", KGEConfig(**PBG, pbg_partitions=2), progress=False)
    overrides = [f"{k}={v}" for k, v in PBG.items() if k != "engine"]
    cmd = [sys.executable, "-m", "ntulm", "-q", "train-kge", "--engine", "pbg", "--nproc", "2"]
    out = tmp_path / "p2"
    res = subprocess.run(
        [*cmd, "--graph", str(graph), "--out", str(out), *overrides],
        env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "PBG rank 1: buckets" in res.stdout
    m2 = json.loads((out / "metrics.json").read_text())
    emb2 = NTUEmbeddings.load(out)
    for emb in (emb1, emb2):
        assert emb.tables["user"].shape == (301, 16) and emb.tables["hashtag"].shape == (157, 16)
        assert set(emb.relations) == {"authored", "favorited"}
        assert np.isfinite(emb.tables["user"]).all()
    assert json.loads((out / "DONE.json").read_text())["stage"] == "kge"
    mrr1, mrr2 = (m["link_prediction"]["overall"]["mrr"] for m in (m1, m2))
    rand = m1["random_baseline"]["overall"]["mrr"]
    assert mrr1 > 3 * rand and mrr2 > 3 * rand, (mrr1, mrr2, rand)
    assert abs(mrr2 / mrr1 - 1) < MRR_TOL, (mrr1, mrr2)
    assert m2["train"]["engine"] == "pbg" and m2["pbg"]["ranks"] == 2
    held = m2["pbg"]["holdings"]
    assert [h["partition_server_partitions"] for h in held] == [[0], [1]]
    for h in held:
        assert h["buckets_trained"], "a rank trained no bucket"
        for t, n in h["table_rows"].items():
            assert h["trainer_rows_at_once_max"][t] == -(-n // 2)  # half, never the whole
    buckets = sorted(tuple(b) for h in held for b in h["buckets_trained"])
    assert buckets == sorted([(i, j) for i in range(2) for j in range(2)] * PBG["num_epochs"])
    for p in m2["pbg"]["processes"]:
        assert p["trainer_peak_rss_mb"] > 0 and p["helper_processes"] >= 2


@pytest.mark.distributed
def test_pbg_several_machines_path(graph, tmp_path):
    """The several-machine commands (pbg_machines=2, one `ntulm train-kge` per rank, a tcp://
    rendezvous, a shared --out), both run on this machine: rank 0 writes the artifact."""
    pytest.importorskip("torchbiggraph")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "kge"
    overrides = [f"{k}={v}" for k, v in PBG.items()]
    overrides += ["pbg_machines=2", f"pbg_init_method=tcp://127.0.0.1:{port}", "pbg_workers=1"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ntulm",
                "-q",
                "train-kge",
                "--graph",
                str(graph),
                "--out",
                str(out),
                *overrides,
                f"pbg_rank={r}",
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (so, se) in zip(procs, outs, strict=True):
        assert p.returncode == 0, so[-2000:] + se[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["pbg"]["ranks"] == 2 and m["pbg"]["partitions"] == 2
    assert m["link_prediction"]["overall"]["mrr"] > 3 * m["random_baseline"]["overall"]["mrr"]
    assert NTUEmbeddings.load(out).tables["user"].shape == (301, 16)
    assert sorted(p.name for p in (out / "pbg").iterdir() if p.name.startswith("machine")) == [
        "machine0",
        "machine1",
    ]
