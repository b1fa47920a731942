"""Every stage refuses an unfinished input: a directory without its DONE.json (a run killed or
still running) is an error that names it, at the CLI and in the Python API; never exit 0."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ntulm.artifacts import DONE  # noqa: E402
from ntulm.cli import main  # noqa: E402
from ntulm.errors import ArtifactError  # noqa: E402
from ntulm.kge import NTUEmbeddings  # noqa: E402
from ntulm.kge.synthetic import write_planted_graph  # noqa: E402
from ntulm.lm import NTULM, LMConfig, finetune  # noqa: E402
from ntulm.posts import Post, UserRef  # noqa: E402

UNFINISHED = "not a finished"


def _posts(n: int = 24) -> list[Post]:
    texts = ["the cat sat on the mat", "vote today #maga", "news about the election tonight"]
    return [
        Post(id=str(i), text=f"{texts[i % 3]} {i}", author=UserRef(id=str(i % 3))) for i in range(n)
    ]


@pytest.fixture(scope="module")
def ntu() -> NTUEmbeddings:
    rng = np.random.default_rng(0)
    return NTUEmbeddings(
        tables={"user": rng.normal(size=(3, 8)).astype(np.float32)},
        keys={"user": ["id:0", "id:1", "id:2"]},
        relations={},
        user_handles=[None, None, None],
        config={},
    )


def _cfg(backbone: str, **kw) -> LMConfig:
    base = {"backbone": backbone, "batch_size": 8, "max_length": 16, "progress": False}
    return LMConfig.build({**base, "max_epochs": 1, **kw})


@pytest.fixture(scope="module")
def killed_model(backbone, ntu, tmp_path_factory) -> Path:
    """A model directory of a fine-tune killed after its first epoch's save, over the directory
    of a finished earlier run (whose DONE.json must not survive)."""
    d = tmp_path_factory.mktemp("killed") / "m"
    finetune(_posts(), _cfg(backbone), d, ntu=ntu)
    assert (d / DONE).exists()

    def kill(step: int) -> None:
        if step == 4:  # epoch 2 (3 steps per epoch): epoch 1's model is saved
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(_posts(), _cfg(backbone, max_epochs=3, lr=1e-3), d, ntu=ntu, on_step=kill)
    assert (d / "lm.json").exists() and (d / "model").is_dir()
    return d


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _jsonl(path: Path, posts: list[Post]) -> Path:
    path.write_text("".join(json.dumps(p.to_json()) + "\n" for p in posts))
    return path


# ---------------------------------------------------------------------------- lm
def test_a_killed_finetune_is_not_a_model(killed_model):
    assert not (killed_model / DONE).exists()
    with pytest.raises(ArtifactError, match=f"{killed_model}: {UNFINISHED} lm artifact"):
        NTULM.load(killed_model)


def test_embed_refuses_an_unfinished_model(killed_model, tmp_path, capsys):
    posts = _jsonl(tmp_path / "p.jsonl", _posts(4))
    out = tmp_path / "e.parquet"
    args = ("embed", "--model", str(killed_model), "--posts", str(posts), "--out", str(out))
    code, err = _cli(capsys, *args)
    assert code == 2 and f"--model {killed_model}: {UNFINISHED} lm artifact" in err
    assert not out.exists()


def test_evaluate_refuses_an_unfinished_model(killed_model, tmp_path, capsys):
    out = tmp_path / "ev"
    code, err = _cli(
        capsys, "evaluate", "--model", f"m={killed_model}", "--out", str(out), "seeds=[1]"
    )
    assert code == 2 and UNFINISHED in err and str(killed_model) in err


def test_saved_model_is_finished_and_loads(backbone, ntu, tmp_path):
    torch.manual_seed(0)
    model, _ = NTULM.from_backbone(_cfg(backbone), ntu.dim)
    model.ntu = ntu
    model.save(tmp_path / "m")
    again = NTULM.load(tmp_path / "m")
    np.testing.assert_array_equal(model.encode(_posts(3)), again.encode(_posts(3)))


# ---------------------------------------------------------------------------- kge and graph
def test_finetune_embed_evaluate_refuse_unfinished_ntu_embeddings(backbone, ntu, tmp_path, capsys):
    ntu.save(tmp_path / "ntu")
    (tmp_path / "ntu" / DONE).unlink()  # train-kge killed, or still running
    posts = _jsonl(tmp_path / "p.jsonl", _posts(4))
    needle = f"--ntu {tmp_path / 'ntu'}: {UNFINISHED} kge artifact"
    code, err = _cli(
        capsys, "finetune", "--posts", str(posts), "--ntu", str(tmp_path / "ntu"),
        "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == 2 and needle in err
    torch.manual_seed(0)
    model, _ = NTULM.from_backbone(_cfg(backbone, use_ntu=False), None)
    model.save(tmp_path / "bert")  # a finished model
    code, err = _cli(
        capsys, "embed", "--model", str(tmp_path / "bert"), "--posts", str(posts),
        "--ntu", str(tmp_path / "ntu"), "--out", str(tmp_path / "e.parquet"),
    )  # fmt: skip
    assert code == 2 and needle in err
    code, err = _cli(  # a shard of a sharded embed too
        capsys, "embed", "--model", str(tmp_path / "bert"), "--posts", str(posts),
        "--ntu", str(tmp_path / "ntu"), "--out", str(tmp_path / "shards"), "--shard", "0/2",
    )  # fmt: skip
    assert code == 2 and needle in err
    code, err = _cli(
        capsys, "evaluate", "--model", f"bert={tmp_path / 'bert'}", "--posts", str(posts),
        "--ntu", str(tmp_path / "ntu"), "--out", str(tmp_path / "ev"), "--post-concat", "bert",
        "eval.tasks=[{type: classification, label: community}]",
    )  # fmt: skip
    assert code == 2 and needle in err


def test_train_kge_and_ntu_stats_refuse_an_unfinished_graph(tmp_path, capsys):
    graph = tmp_path / "g"
    write_planted_graph(graph)
    (graph / DONE).unlink()  # build-graph killed, or still running
    code, err = _cli(capsys, "train-kge", "--graph", str(graph), "--out", str(tmp_path / "k"))
    assert code == 2 and f"{graph}: {UNFINISHED} graph artifact" in err
    posts = _jsonl(tmp_path / "p.jsonl", _posts(4))
    code, err = _cli(capsys, "ntu-stats", "--posts", str(posts), "--graph", str(graph))
    assert code == 2 and f"{graph}: {UNFINISHED} graph artifact" in err


def test_a_killed_train_kge_leaves_no_finished_directory(tmp_path, capsys):
    from ntulm.kge import KGEConfig, train_kge

    graph = tmp_path / "g"
    write_planted_graph(graph)
    cfg = KGEConfig.build({"dimension": 4, "num_epochs": 2, "batch_size": 64})
    train_kge(graph, tmp_path / "k", cfg, progress=False, evaluate=False)
    assert (tmp_path / "k" / DONE).exists()

    def kill(epoch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # the earlier run's embeddings are still there ...
        train_kge(graph, tmp_path / "k", cfg, progress=False, on_epoch_end=kill)
    posts = _jsonl(tmp_path / "p.jsonl", _posts(4))
    code, err = _cli(
        capsys, "finetune", "--posts", str(posts), "--ntu", str(tmp_path / "k"),
        "--out", str(tmp_path / "m"),
    )  # fmt: skip
    assert code == 2 and UNFINISHED in err  # ... but not a finished artifact
