"""The downstream NTU dropout (`unknown_ntu_train`): a seeded share of a task's training posts is
embedded as a post by an author the graph never saw (or with the chosen NTU types unknown), and
nothing else changes."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ntulm.errors import ConfigError  # noqa: E402
from ntulm.evaluate.tasks import Task  # noqa: E402
from ntulm.kge import NTUEmbeddings  # noqa: E402
from ntulm.lm import NTULM, LMConfig  # noqa: E402
from ntulm.lm.data import ntu_type_vectors, ntu_vectors  # noqa: E402
from ntulm.lm.encode import encode  # noqa: E402
from ntulm.pipeline.config import PipelineConfig, VariantSpec  # noqa: E402
from ntulm.pipeline.run import Pipeline, unknown_subset  # noqa: E402
from ntulm.posts import Post, UserRef  # noqa: E402


@pytest.fixture(scope="module")
def emb(ntu: NTUEmbeddings) -> NTUEmbeddings:
    """The shared tiny NTU table (conftest ``ntu``: users id:1 and id:2 known, hashtag maga)."""
    return ntu


def _posts(n: int, start: int = 0) -> list[Post]:
    texts = ["the cat sat", "vote today #maga", "breaking news", "hello there"]
    return [
        Post(
            id=str(i),
            text=f"{texts[i % 4]} {i}",
            author=UserRef(id=str(1 + i % 2)),  # every author known to the table
            hashtags=["maga"] if i % 3 == 0 else [],
        )
        for i in range(start, start + n)
    ]


def _new_author(p: Post) -> Post:
    """The same post written by an author the graph never saw."""
    return dataclasses.replace(p, author=UserRef(id="new-author"))


def test_unknown_types_contribute_the_table_mean_as_a_new_authors_ntus_do(emb):
    posts = _posts(9)
    forgot, known = ntu_vectors(posts, emb, ["author", "hashtag"], unknown=["author"])
    new, known_new = ntu_vectors([_new_author(p) for p in posts], emb, ["author", "hashtag"])
    assert np.allclose(forgot, new) and np.array_equal(known, known_new)
    own, _ = ntu_vectors(posts, emb, ["author", "hashtag"])
    assert not np.allclose(forgot, own)  # the author did count before
    # every type unknown: the table mean, the overlap flag off
    none, flag = ntu_vectors(posts, emb, ["author", "hashtag"], unknown=["author", "hashtag"])
    assert np.allclose(none, emb.mean[None]) and not flag.any()
    # per-type tokens: the unknown type is absent (NaN), the others untouched
    typed, _ = ntu_type_vectors(posts, emb, ["author", "hashtag"], unknown=["author"])
    own_typed, _ = ntu_type_vectors(posts, emb, ["author", "hashtag"])
    assert np.isnan(typed[:, 0]).all()
    assert np.array_equal(typed[:, 1], own_typed[:, 1], equal_nan=True)


def test_unknown_subset_is_seeded_sized_and_distinct():
    a = unknown_subset(101, 0.25, [13, "task"])
    assert len(a) == 25 and len(set(a.tolist())) == 25 and (np.diff(a) > 0).all()
    assert np.array_equal(a, unknown_subset(101, 0.25, [13, "task"]))
    assert not np.array_equal(a, unknown_subset(101, 0.25, [13, "other task"]))
    assert len(unknown_subset(3, 0.1, [1, "t"])) == 0


def test_the_option_is_validated_and_leaves_old_fingerprints_alone():
    plain = VariantSpec(name="N + e", post_concat_of="N")
    assert "unknown_ntu_train" not in plain.model_dump(mode="json")  # cached runs stay valid
    assert "unknown_ntu_types" not in plain.model_dump(mode="json")
    v = VariantSpec(
        name="d", post_concat_of="N", unknown_ntu_train=0.3, unknown_ntu_types=["author"]
    )
    assert v.unknown_types() == ["author"] and plain.unknown_types() == ["author", "hashtag"]
    base = {"posts": ["x"], "eval": {"tasks": [{"type": "hashtag"}]}}
    for bad, why in (
        ({"name": "B", "use_ntu": False, "unknown_ntu_train": 0.2}, "uses no NTUs"),
        ({"name": "B", "unknown_ntu_train": 1.0}, "unknown_ntu_train"),
        ({"name": "B", "unknown_ntu_train": 0.2, "unknown_ntu_types": ["nope"]}, "nope"),
    ):
        with pytest.raises(ConfigError, match=why):
            PipelineConfig.build({**base, "variants": [bad]})
    # a control pairs with the variant that has the same dropout
    cfg = PipelineConfig.build({**base, "variants": [
        {"name": "BERT", "use_ntu": False},
        {"name": "N", "ntu_types": ["author"]},
        {"name": "N + e", "post_concat_of": "N", "ntu_types": ["author"]},
        {"name": "N + e drop", "post_concat_of": "N", "ntu_types": ["author"], "unknown_ntu_train": 0.3},
        {"name": "N + e drop mean", "post_concat_of": "N", "ntu_types": ["author"],
         "unknown_ntu_train": 0.3, "control": "mean"},
        {"name": "N + e mean", "post_concat_of": "N", "ntu_types": ["author"], "control": "mean"},
    ]})  # fmt: skip
    assert cfg.controls() == {"N + e drop": ["N + e drop mean"], "N + e": ["N + e mean"]}


@pytest.mark.parametrize("ntu_tokens", ["mean", "per_type"])
def test_training_rows_of_the_share_are_the_posts_by_a_new_author(
    tmp_path, backbone, emb, ntu_tokens
):
    torch.manual_seed(0)
    lcfg = LMConfig.build(
        {"backbone": backbone, "max_length": 16, "progress": False, "ntu_tokens": ntu_tokens}
    )
    model, _ = NTULM.from_backbone(lcfg, emb.dim)
    model.ntu = emb
    model = model.eval()
    train, val, test = _posts(24), _posts(6, 100), _posts(6, 200)
    task = Task(
        name="t", kind="classification", train=train, val=val, test=test,
        y_train=np.arange(24) % 2, y_val=np.arange(6) % 2, y_test=np.arange(6) % 2,
        classes=["a", "b"], metrics=["macro_f1"],
    )  # fmt: skip
    types = ["author", "hashtag"]
    variants = [
        {"name": "BERT", "use_ntu": False},
        {"name": "N", "ntu_types": types},
        {"name": "N + e", "post_concat_of": "N", "ntu_types": types},
        {"name": "N + e drop", "post_concat_of": "N", "ntu_types": types,
         "unknown_ntu_train": 0.5, "unknown_ntu_types": ["author"]},
        {"name": "B + e drop", "post_concat_of": "BERT", "ntu_types": types,
         "unknown_ntu_train": 0.5, "unknown_ntu_types": ["author"]},
    ]  # fmt: skip
    cfg = PipelineConfig.build(
        {
            "posts": ["x"],
            "eval": {"tasks": [{"type": "hashtag"}], "embed_dtype": "float32"},
            "variants": variants,
        }
    )
    p = Pipeline(cfg, tmp_path, progress=False)
    v = {x.name: x for x in cfg.variants}
    base = p.embeddings(v["N + e"], model, "fp", task, emb)
    drop = p.embeddings(v["N + e drop"], model, "fp", task, emb)
    idx = unknown_subset(24, 0.5, [cfg.eval.seed, "t"])
    rest = np.setdiff1d(np.arange(24), idx)
    assert len(idx) == 12
    for split in ("val", "test"):  # measured on the posts as they are
        assert np.array_equal(drop[split], base[split])
    assert np.array_equal(drop["train"][rest], base["train"][rest])
    # the share: exactly what the same posts by a new author give, model input and e_ntu alike
    new = [_new_author(train[i]) for i in idx]
    pooled = encode(model, new, concat_ntu=False, batch_size=8, dtype="float32")
    want = np.concatenate([pooled, ntu_vectors(new, emb, types)[0]], axis=1)
    assert np.allclose(drop["train"][idx], want, atol=1e-5)
    assert not np.allclose(drop["train"][idx], base["train"][idx], atol=1e-3)
    # post-concat of a text-only model: the text part stays, e_ntu is the new author's
    bert, _ = NTULM.from_backbone(
        LMConfig.build({**lcfg.model_dump(), "use_ntu": False, "ntu_tokens": "mean"}), 0
    )
    bert = bert.eval()
    b = p.embeddings(v["B + e drop"], bert, "fp-bert", task, emb)
    h = b["train"].shape[1] - emb.dim
    e_new, _ = ntu_vectors(new, emb, types)
    assert np.allclose(b["train"][idx, h:], e_new, atol=1e-6)
    plain = encode(bert, [train[i] for i in idx], concat_ntu=False, batch_size=8, dtype="float32")
    assert np.allclose(b["train"][idx, :h], plain, atol=1e-5)
