"""NTU embedding training end to end on generated graphs: learning, resume, artifact, CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ntulm.artifacts import is_done
from ntulm.cli import main
from ntulm.errors import ArtifactError
from ntulm.kge import KGEConfig, NTUEmbeddings, train_kge
from ntulm.kge.synthetic import write_planted_graph
from ntulm.posts import UserRef

TINY = dict(
    dimension=16,
    batch_size=400,
    num_batch_negs=20,
    num_uniform_negs=10,
    lr=0.1,
    compute_dtype="float32",
    eval_fraction=0.05,
)


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    comm = write_planted_graph(d, num_users=90, num_hashtags=30, communities=3, edges_per_user=12)
    return d, comm


@pytest.fixture(scope="module")
def trained(graph, tmp_path_factory):
    out = tmp_path_factory.mktemp("kge")
    emb, metrics = train_kge(graph[0], out, KGEConfig(num_epochs=12, **TINY), progress=False)
    return out, emb, metrics


def test_loss_falls_and_communities_separate(graph, trained):
    _, comm = graph
    _, emb, metrics = trained
    losses = metrics["train"]["loss_per_epoch"]
    assert losses[-1] < 0.8 * losses[0]
    unit = emb.tables["hashtag"] / np.linalg.norm(emb.tables["hashtag"], axis=1, keepdims=True)
    sim = unit @ unit.T
    same = comm["hashtag"][:, None] == comm["hashtag"][None, :]
    np.fill_diagonal(same, False)
    other = comm["hashtag"][:, None] != comm["hashtag"][None, :]
    assert sim[same].mean() > sim[other].mean() + 0.3
    lp, rb = metrics["link_prediction"]["overall"], metrics["random_baseline"]["overall"]
    assert lp["mrr"] > 1.5 * rb["mrr"]


def test_relation_vectors_learn(trained):
    _, emb, _ = trained
    for vec in emb.relations.values():
        assert np.abs(vec).sum() > 0


def test_resume_equals_uninterrupted(graph, tmp_path):
    cfg = KGEConfig(num_epochs=4, **TINY)
    full, _ = train_kge(graph[0], tmp_path / "full", cfg, progress=False, evaluate=False)

    def crash(epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_kge(graph[0], tmp_path / "crash", cfg, progress=False, on_epoch_end=crash)
    assert not is_done(tmp_path / "crash", "kge")
    resumed, metrics = train_kge(
        graph[0], tmp_path / "crash", cfg, resume=True, progress=False, evaluate=False
    )
    assert metrics["train"]["epochs"] == 4
    for t in full.tables:
        np.testing.assert_array_equal(full.tables[t], resumed.tables[t])
    for r in full.relations:
        np.testing.assert_array_equal(full.relations[r], resumed.relations[r])


def test_save_load_round_trip_and_lookups(trained):
    out, emb, _ = trained
    assert is_done(out, "kge")
    loaded = NTUEmbeddings.load(out)
    assert loaded.dim == 16 and loaded.keys == emb.keys
    for t in emb.tables:
        np.testing.assert_array_equal(loaded.tables[t], emb.tables[t])
    for r in emb.relations:
        np.testing.assert_array_equal(loaded.relations[r], emb.relations[r])
    assert loaded.config["dimension"] == 16
    all_rows = np.concatenate(list(emb.tables.values()))
    np.testing.assert_allclose(loaded.mean, all_rows.mean(0), rtol=1e-5, atol=1e-6)
    assert loaded.mean.dtype == np.float32
    # user 5 has key id:1005 and handle user5
    assert loaded.lookup_user(UserRef(id="1005")) == 5
    assert loaded.lookup_user(UserRef(handle="User5")) == 5
    assert loaded.lookup_user(UserRef(id="999999", handle="user7")) == 7
    assert loaded.lookup_user(UserRef(handle="nobody")) is None
    assert loaded.lookup_hashtag("#TAG3") == 3
    np.testing.assert_array_equal(loaded.vector("hashtag", "tag3"), emb.tables["hashtag"][3])
    near = loaded.nearest("hashtag", "tag0", k=5)
    assert len(near) == 5 and "tag0" not in [k for k, _ in near]
    assert near[0][1] >= near[-1][1]
    assert loaded.nearest("user", "id:1000", k=3, among="hashtag")[0][0].startswith("tag")
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"authored", "favorited", "overall"} <= set(metrics["link_prediction"])


def test_load_missing_is_clear(tmp_path):
    with pytest.raises(ArtifactError, match="no NTU embeddings"):
        NTUEmbeddings.load(tmp_path)


def test_cli_end_to_end(graph, tmp_path, capsys):
    out = tmp_path / "kge"
    rc = main(
        ["-q", "train-kge", "--graph", str(graph[0]), "--out", str(out)]
        + [f"{k}={v}" for k, v in TINY.items()]
        + ["num_epochs=2", "loss_fn=softmax"]
    )
    assert rc == 0
    said = capsys.readouterr().out
    assert "MRR" in said and " n=" in said  # held-out edges per relation
    assert is_done(out, "kge")
    assert NTUEmbeddings.load(out).config["loss_fn"] == "softmax"


def test_few_held_out_edges_are_warned_with_n(graph, tmp_path, caplog):
    cfg = KGEConfig(**{**TINY, "num_epochs": 1, "eval_fraction": 0.01})
    with caplog.at_level(logging.WARNING, logger="ntulm.kge.train"):
        _, metrics = train_kge(graph[0], tmp_path / "o", cfg, progress=False)
    lp = metrics["link_prediction"]
    few = [r for r, m in lp.items() if isinstance(m, dict) and r != "overall" and m["edges"] < 50]
    assert few  # about 11 held-out edges in all
    (line,) = [r.getMessage() for r in caplog.records if "held-out edge" in r.getMessage()]
    for r in few:
        assert f"{r}: {lp[r]['edges']} held-out edge(s)" in line


def test_cli_bad_graph_path(tmp_path, capsys):
    rc = main(["-q", "train-kge", "--graph", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "Traceback" not in err


def test_cli_bad_config_names_field(graph, tmp_path, capsys):
    rc = main(
        [
            "-q",
            "train-kge",
            "--graph",
            str(graph[0]),
            "--out",
            str(tmp_path / "o"),
            "num_batch_negs=0",
        ]
    )
    assert rc == 2
    assert "num_batch_negs" in capsys.readouterr().err


def test_cli_broken_graph_artifact(graph, tmp_path, capsys):
    broken = tmp_path / "graph"
    write_planted_graph(broken, num_users=6, num_hashtags=3, edges_per_user=2)
    (broken / "edges.parquet").write_bytes(b"not parquet")
    rc = main(["-q", "train-kge", "--graph", str(broken), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "edges.parquet" in capsys.readouterr().err


def _crash_after_one_epoch(graph_dir, out, cfg):
    def crash(epoch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_kge(graph_dir, out, cfg, progress=False, evaluate=False, on_epoch_end=crash)
    return out / "checkpoints"


def test_checkpoint_is_safetensors_and_truncation_is_named_corrupt(graph, tmp_path):
    cfg = KGEConfig(num_epochs=2, **TINY)
    ckdir = _crash_after_one_epoch(graph[0], tmp_path / "o", cfg)
    (ckpt,) = ckdir.iterdir()
    assert ckpt.name == "epoch_0001.safetensors"  # no pickle anywhere in a checkpoint
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"epoch_0001\.safetensors: corrupt checkpoint"):
        train_kge(graph[0], tmp_path / "o", cfg, resume=True, progress=False, evaluate=False)


def test_resume_removes_orphan_checkpoint_tmp(graph, tmp_path):
    cfg = KGEConfig(num_epochs=2, **TINY)
    ckdir = _crash_after_one_epoch(graph[0], tmp_path / "o", cfg)
    orphan = ckdir / ".epoch_0002.safetensors.abc123.tmp"  # a run killed mid-write
    orphan.write_bytes(b"partial")
    _, metrics = train_kge(graph[0], tmp_path / "o", cfg, resume=True, progress=False)
    assert metrics["train"]["epochs"] == 2
    assert not orphan.exists()
    assert [p.name for p in ckdir.iterdir()] == ["epoch_0002.safetensors"]


def test_zero_epochs_rejected_at_validation(graph, tmp_path, capsys):
    with pytest.raises(ValueError, match="num_epochs"):
        KGEConfig(num_epochs=0)
    rc = main(
        ["-q", "train-kge", "--graph", str(graph[0]), "--out", str(tmp_path / "o")]
        + ["num_epochs=0"]
    )
    assert rc == 2
    assert "num_epochs" in capsys.readouterr().err
